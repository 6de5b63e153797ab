"""A Debian base image made from Debian's packages, for machines that reach no image registry.

`debootstrap --variant=minbase` lays a bookworm root file system from the machine's own
apt source, with the few packages the images' Dockerfiles expect of a Python base (an
interpreter with venv, and useradd); `docker import` turns it into an image. The image is
kept and reused: making it again takes about a minute.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
from pathlib import Path

from scripts.compose.docker import Docker

log = logging.getLogger(__name__)

BASE_IMAGE = "local/debian-python:bookworm"
SUITE = "bookworm"
# what python:3.12-slim gives the Dockerfiles, and minbase lacks
PACKAGES = ("python3", "python3-venv", "passwd", "ca-certificates")
SOURCES = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))


def apt_mirror(suite: str = SUITE, sources: tuple[Path, ...] = SOURCES) -> str:
    """The first URI of the machine's apt sources that serves ``suite`` (one-line or deb822)."""
    files: list[Path] = []
    for source in sources:
        if source.is_dir():
            files += sorted(source.glob("*.list")) + sorted(source.glob("*.sources"))
        elif source.is_file():
            files.append(source)
    for path in files:
        mirror = mirror_in(path.read_text(), deb822=path.suffix == ".sources", suite=suite)
        if mirror is not None:
            return mirror
    raise RuntimeError(f"no apt source for {suite} in {', '.join(map(str, sources))}")


def mirror_in(text: str, *, deb822: bool, suite: str) -> str | None:
    """The URI of the first `deb` source for ``suite`` in one apt sources file."""
    if not deb822:
        for line in text.splitlines():
            words = [w for w in line.split("#", 1)[0].split() if not w.startswith("[")]
            if len(words) >= 3 and words[0] == "deb" and words[2] == suite:
                return words[1]
        return None
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if ":" in line and not line.startswith(("#", " ")):
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.strip()
        if "deb" in fields.get("types", "").split() and suite in fields.get("suites", "").split():
            return fields.get("uris", "").split()[0]
    return None


def ensure_base(docker: Docker, image: str = BASE_IMAGE) -> bool:
    """Make ``image`` unless it exists; True when it was made now."""
    if docker.image_exists(image):
        log.info("reusing base image %s", image)
        return False
    if shutil.which("debootstrap") is None:
        raise RuntimeError("debootstrap is not installed (apt-get install debootstrap)")
    mirror = apt_mirror()
    log.info("making %s with debootstrap from %s", image, mirror)
    with tempfile.TemporaryDirectory(prefix="berth-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(PACKAGES)}",
                SUITE,
                str(rootfs),
                mirror,
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        # the mirror debootstrap used is the image's apt source; drop its package lists
        for lists in (rootfs / "var/lib/apt/lists").glob("*_*"):
            lists.unlink()
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        docker.run("import", "--change", "ENV LANG=C.UTF-8", "-", image, stdin=tar.stdout)
        if tar.wait() != 0:
            raise RuntimeError("tar of the root file system failed")
    return True
