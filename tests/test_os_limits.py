"""The start-up check names each OS limit that is too low, with the command that fixes it."""

from b2bua.os_limits import WANT_BACKLOG, WANT_BUFFER, check


def test_low_kernel_limits_are_named_with_their_fix(tmp_path):
    (tmp_path / "rmem_max").write_text("212992\n")
    (tmp_path / "wmem_max").write_text(f"{WANT_BUFFER}\n")
    (tmp_path / "netdev_max_backlog").write_text("1000\n")
    warnings = check((20000, 20099), proc=tmp_path)
    assert any("net.core.rmem_max is 212992" in w and f"sysctl -w net.core.rmem_max={WANT_BUFFER}" in w for w in warnings)
    assert any(f"net.core.netdev_max_backlog={WANT_BACKLOG}" in w for w in warnings)
    assert not any("wmem_max" in w for w in warnings)


def test_generous_limits_give_no_warning(tmp_path):
    for name in ("rmem_max", "wmem_max"):
        (tmp_path / name).write_text(f"{WANT_BUFFER * 2}\n")
    (tmp_path / "netdev_max_backlog").write_text(f"{WANT_BACKLOG}\n")
    assert [w for w in check((20000, 20099), proc=tmp_path) if "net.core" in w] == []
