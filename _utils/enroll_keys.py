"""
The master's minion keys as the enrollment guard sees them: a thin adapter
over Salt's key cache (``keys.cache_driver``, ``localfs_key`` by default:
``pki_dir/minions{,_pre,_rejected,_denied}/<id>``).
"""

import logging

import salt.exceptions
import salt.key

log = logging.getLogger(__name__)


class Keys:
    def __init__(self, opts):
        self.key = salt.key.Key(opts)
        self.cache = self.key.cache

    def close(self):
        if "event" in self.key.__dict__:  # a cached_property: only if a delete opened it
            self.key.event.destroy()

    def get(self, minion_id):
        """``{"state": accepted|pending|rejected, "pub": PEM}`` or None."""
        try:
            return self.cache.fetch("keys", minion_id)
        except salt.exceptions.SaltCacheError:
            return None

    def mtime(self, minion_id):
        try:
            return self.cache.updated("keys", minion_id)
        except salt.exceptions.SaltCacheError:
            return None

    def listing(self):
        return self.key.list_keys()

    def pending(self):
        """``[(id, pub, mtime)]`` of every pending key."""
        out = []
        for minion_id in self.listing()["minions_pre"]:
            key, mtime = self.get(minion_id), self.mtime(minion_id)
            if key and key.get("state") == "pending" and mtime is not None:
                out.append((minion_id, key["pub"], float(mtime)))
        return out

    def install(self, minion_id, pub):
        """Make ``pub`` the accepted key of ``minion_id``, whatever Salt held for the id before."""
        self.cache.store("keys", minion_id, {"pub": pub, "state": "accepted"})
        self._flush_denied(minion_id)

    def drop_pending(self, minion_id, pub):
        """Delete the id's pending key if it is still ``pub``; True if deleted."""
        key = self.get(minion_id)
        if not key or key.get("state") != "pending" or key.get("pub", "").strip() != pub.strip():
            return False
        return bool(self.cache.flush("keys", minion_id))

    def delete(self, minion_id):
        """Delete every key Salt holds for the id (accepted, pending, rejected, denied) and its minion cache."""
        matches = self.key.glob_match(minion_id)
        found = {status: ids for status, ids in matches.items() if minion_id in ids}
        if found:
            self.key.delete_key(match_dict={status: [minion_id] for status in found})
        return sorted(found)

    def _flush_denied(self, minion_id):
        try:
            self.cache.flush("denied_keys", minion_id)
        except salt.exceptions.SaltCacheError:
            pass
