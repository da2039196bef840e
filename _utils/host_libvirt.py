"""
libvirt's domains on a compute host as plain data: their network interfaces (domain XML) and
their memory. libvirt-python is optional at import time; the readers raise :class:`HostError`
without it.
"""

import contextlib
import logging
import xml.etree.ElementTree as ET

from host_errors import HostError

try:
    import libvirt  # pylint: disable=import-error

    HAS_LIBVIRT = True
except ImportError:  # pragma: no cover - depends on the host
    libvirt = None
    HAS_LIBVIRT = False

log = logging.getLogger(__name__)


def _interface(iface):
    mac = iface.find("mac")
    target = iface.find("target")
    source = iface.find("source")
    vport = iface.find("virtualport")
    params = vport.find("parameters") if vport is not None else None
    return {
        "type": iface.get("type"),
        "mac": (mac.get("address") or "").lower() if mac is not None else None,
        "target": target.get("dev") if target is not None else None,
        "bridge": source.get("bridge") if source is not None else None,
        "network": source.get("network") if source is not None else None,
        "virtualport": vport.get("type") if vport is not None else None,
        "interfaceid": params.get("interfaceid") if params is not None else None,
    }


def parse_domain_xml(xml_text, active):
    """A domain as plain data: name, uuid, active and its network interfaces."""
    root = ET.fromstring(xml_text)
    return {
        "name": root.findtext("name"),
        "uuid": (root.findtext("uuid") or "").lower(),
        "active": bool(active),
        "interfaces": [_interface(iface) for iface in root.findall("./devices/interface")],
    }


@contextlib.contextmanager
def connection(uri, read_only=True):
    """A libvirt connection to ``uri``, closed afterwards; :class:`HostError` when it cannot be opened."""
    if not HAS_LIBVIRT:
        raise HostError("libvirt-python is not installed (python3-libvirt)")
    libvirt.registerErrorHandler(lambda *_: None, None)
    try:
        conn = libvirt.openReadOnly(uri) if read_only else libvirt.open(uri)
    except libvirt.libvirtError as exc:
        raise HostError(f"cannot reach libvirt at {uri}: {exc}") from exc
    try:
        yield conn
    finally:
        conn.close()


def domains(uri):
    """Every domain of ``uri`` as :func:`parse_domain_xml` returns it."""
    with connection(uri) as conn:
        found = []
        for dom in conn.listAllDomains(0):
            try:
                found.append(parse_domain_xml(dom.XMLDesc(0), dom.isActive()))
            except libvirt.libvirtError as exc:  # a domain vanished mid-listing
                log.info("host_libvirt: skipping domain: %s", exc)
        return found


def domain_memory(conn, include_defined=False, errors=()):
    """``[{"name", "active", "max_kib", "current_kib"}]`` of a libvirt connection's domains.

    Running domains always; defined (shut-off) ones too with ``include_defined``.
    ``max_kib`` is the domain's maximum memory (``maxMemory()``, KiB): what the
    guest may touch, whatever its balloon says now (``current_kib``).
    """
    rows = []
    for dom in conn.listAllDomains(0):
        try:
            active = bool(dom.isActive())
            if not active and not include_defined:
                continue
            info = dom.info()  # [state, maxMem KiB, memory KiB, nrVirtCpu, cpuTime]
            rows.append({"name": dom.name(), "active": active, "max_kib": int(dom.maxMemory()),
                         "current_kib": int(info[2])})
        except errors as exc:  # a domain vanished mid-listing
            log.info("host_libvirt: skipping domain: %s", exc)
    return sorted(rows, key=lambda r: r["name"])


def memory(uri, include_defined=False):
    """:func:`domain_memory` of the domains at ``uri``."""
    with connection(uri) as conn:
        return domain_memory(conn, include_defined, errors=(libvirt.libvirtError,))


def restart_domain(uri, dom_uuid):
    """Destroy and start a persistent domain again (re-creates its taps); a transient one is refused."""
    with connection(uri, read_only=False) as conn:
        dom = conn.lookupByUUIDString(dom_uuid)
        if not dom.isPersistent():
            raise HostError(f"domain {dom.name()} is transient: a restart would delete it")
        if dom.isActive():
            dom.destroy()
        dom.create()
