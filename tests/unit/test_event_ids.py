import os

from edgeinfer.shared.events import new_id


def test_ids_are_32_hex_digits_and_unique_in_a_process() -> None:
    ids = [new_id() for _ in range(100_000)]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids[:100])


def test_a_forked_child_does_not_repeat_its_parents_ids() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent
        os.write(write, ",".join(new_id() for _ in range(100)).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = set(os.read(read, 1 << 16).decode().split(","))
    parent = {new_id() for _ in range(100)}
    assert len(child) == 100 and not child & parent
    # A different random prefix, not just a different counter position.
    assert {i[:16] for i in child}.isdisjoint({i[:16] for i in parent})
