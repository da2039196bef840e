"""
``desktop_notice.send`` with the module's dunders set the Salt way and a fake
``__salt__`` pinning the exact ``cmd.run_all`` call: Windows ``msg`` (simulated:
no Windows here) and Linux ``wall`` (the argument list and stdin pinned here;
``wall`` itself is not run, it would write to every terminal of this box).
"""

from unittest.mock import MagicMock

import pytest
from salt.exceptions import CommandExecutionError

from tests.support.loading import load

desktop_notice = load("_modules/desktop_notice.py")


@pytest.fixture
def run_all():
    return MagicMock(return_value={"retcode": 0, "stdout": "", "stderr": ""})


@pytest.fixture
def configure_loader_modules(run_all):
    return {desktop_notice: {"__grains__": {"kernel": "Windows"}, "__salt__": {"cmd.run_all": run_all}}}


def test_windows_message_to_every_session(run_all):
    assert desktop_notice.send("Your desktop moves within 10 min.", seconds=900) == {"sent": True, "method": "msg"}
    run_all.assert_called_once_with(
        ["msg", "*", "/time:900", "Your desktop moves within 10 min."], python_shell=False, ignore_retcode=True
    )


def test_linux_wall_reads_the_text_on_stdin(run_all):
    desktop_notice.__grains__["kernel"] = "Linux"
    assert desktop_notice.send("hello; rm -rf /")["method"] == "wall"
    run_all.assert_called_once_with(["wall"], stdin="hello; rm -rf /\n", python_shell=False, ignore_retcode=True)


@pytest.mark.parametrize("text, seconds", [("", 60), ("two\nlines", 60), ("x" * 256, 60), ("ok", 0), ("ok", True)])
def test_bad_input_is_refused_before_any_call(run_all, text, seconds):
    with pytest.raises(CommandExecutionError, match="desktop_notice"):
        desktop_notice.send(text, seconds=seconds)
    run_all.assert_not_called()


def test_a_failed_message_is_an_error(run_all):
    run_all.return_value = {"retcode": 1, "stderr": "Error 5 getting session names"}
    with pytest.raises(CommandExecutionError, match="msg failed.*Error 5"):
        desktop_notice.send("hi")
