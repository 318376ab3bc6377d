"""The image's ``USER`` (``name``, ``uid``, ``name:group``, ``uid:gid``) resolved to numbers
through the image's own ``/etc/passwd`` and ``/etc/group``, once, when it is imported: what its
sandboxes' processes then run as (``SandboxSpec.uid``). The rules are the ones Docker and runc
apply when a container starts:

- a name must be in ``/etc/passwd``; a number need not be (its group is then 0, its home ``/``);
- without an explicit group, the primary group is the passwd entry's, and the supplementary
  groups are those ``/etc/group`` lists the user's name in;
- a group name must be in ``/etc/group``; a number need not be.

The files are read inside the new root only (``confined.Root``): an image's links cannot make
the server read the host's account files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from atoll._exceptions import ImageRejected
from atoll.runtime.confined import Root
from atoll.runtime.files import MAX_ID, Accounts


@dataclass(frozen=True)
class ImageUser:
    uid: int = 0
    gid: int = 0
    groups: list[int] = field(default_factory=list)
    home: str = "/root"


def _number(value: str) -> int | None:
    if value.isascii() and value.isdigit() and int(value) <= MAX_ID:
        return int(value)
    return None


def _refuse(user: str, error: str) -> ImageRejected:
    return ImageRejected(
        f"the image's USER {user!r}: {error}", errors=[{"field": "uri", "error": f"image USER: {error}"}]
    )


def resolve(rootfs: Path, user: str) -> ImageUser:
    """``user`` (the image config's ``User``) as numbers; root when it is empty."""
    user = user.strip()
    if not user:
        return ImageUser()
    name, has_group, group = user.partition(":")
    with Root.open(str(rootfs), require_mount=False) as root:
        accounts = Accounts(root)
        passwd, groups = accounts.passwd, accounts.group
    entry = next(
        (e for e in passwd if len(e) > 3 and (e[0] == name or (_number(name) is not None and e[2] == name))),
        None,
    )
    if entry is not None and _number(entry[2]) is not None:
        uid = int(entry[2])
        gid = _number(entry[3]) or 0
        home = (entry[5] if len(entry) > 5 else "") or "/"
        user_name = entry[0]
    elif (number := _number(name)) is not None:
        uid, gid, home, user_name = number, 0, "/", ""
    else:
        raise _refuse(user, f"no user {name!r} in the image's /etc/passwd")
    extra: list[int] = []
    if has_group:
        found = next((e for e in groups if len(e) > 2 and e[0] == group and _number(e[2]) is not None), None)
        if found is not None:
            gid = int(found[2])
        elif (number := _number(group)) is not None:
            gid = number
        else:
            raise _refuse(user, f"no group {group!r} in the image's /etc/group")
    elif user_name:
        for e in groups:
            members = e[3].split(",") if len(e) > 3 else []
            if user_name in members and (number := _number(e[2])) is not None and number != gid:
                extra.append(number)
    return ImageUser(uid=uid, gid=gid, groups=sorted(set(extra)), home=home)
