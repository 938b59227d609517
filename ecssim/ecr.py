"""The simulator's ECR: repositories whose tags point at digests, and how each image behaves when run.

Tags move (push a new digest under an old tag) and digests can be deleted, as
an ECR lifecycle rule does with untagged images; both matter because ECS
pins a deployment's digests (API_ContainerImage, "software version
consistency") and replacements fail with CannotPullContainerError when the
pinned digest is gone (aws/amazon-ecs-agent#4226).
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

_URI = re.compile(r"^(?P<account>\d{12})\.dkr\.ecr\.(?P<region>[a-z0-9-]+)\.amazonaws\.com/"
                  r"(?P<repo>[a-z0-9._/-]+?)(?::(?P<tag>[\w.-]+))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?$")


@dataclass(frozen=True)
class ImageRef:
    account: str
    region: str
    repo: str
    tag: str | None
    digest: str | None


def parse_uri(uri: str) -> ImageRef | None:
    """An ECR image URI split up; None for images outside ECR (docker.io etc.)."""
    m = _URI.match(uri)
    if not m:
        return None
    return ImageRef(m["account"], m["region"], m["repo"], m["tag"] if m["tag"] or m["digest"] else "latest",
                    m["digest"])


def synthetic_digest(text: str) -> str:
    """A stable digest for images the simulator's ECR does not hold (public images)."""
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


@dataclass
class Behaviour:
    """How tasks running an image fare."""

    broken: bool = False  # cannot be pulled: CannotPullContainerError
    crash_after: float | None = None  # seconds RUNNING before the essential container exits
    exit_code: int = 137


@dataclass
class Image:
    digest: str
    tags: set[str]
    pushed_at: float
    size: int


@dataclass
class Repository:
    name: str
    images: dict[str, Image] = field(default_factory=dict)  # digest -> image

    def by_tag(self, tag: str) -> Image | None:
        return next((i for i in self.images.values() if tag in i.tags), None)


@dataclass
class Registry:
    """One account's ECR in one Region."""

    account: str
    region: str
    repositories: dict[str, Repository] = field(default_factory=dict)
    behaviours: dict[str, Behaviour] = field(default_factory=dict)  # digest -> behaviour
    _pushes: int = 0

    def uri(self, repo: str, tag: str | None = None, digest: str | None = None) -> str:
        base = f"{self.account}.dkr.ecr.{self.region}.amazonaws.com/{repo}"
        return f"{base}@{digest}" if digest else f"{base}:{tag or 'latest'}"

    def repository(self, name: str) -> Repository:
        return self.repositories.setdefault(name, Repository(name))

    def push(self, repo: str, tag: str, now: float, digest: str | None = None) -> str:
        """Push an image under ``tag`` (moving the tag if it pointed elsewhere); returns its digest."""
        r = self.repository(repo)
        self._pushes += 1
        digest = digest or synthetic_digest(f"{self.account}/{self.region}/{repo}:{tag}#{self._pushes}")
        for other in r.images.values():
            other.tags.discard(tag)
        img = r.images.get(digest)
        if img is None:
            img = r.images[digest] = Image(digest, set(), now, 30_000_000 + self._pushes)
        img.tags.add(tag)
        return digest

    def delete_digest(self, repo: str, digest: str) -> bool:
        r = self.repositories.get(repo)
        return bool(r and r.images.pop(digest, None))

    def untag(self, repo: str, tag: str) -> Image | None:
        """Remove a tag; an image left without tags is deleted (BatchDeleteImage by tag)."""
        r = self.repositories.get(repo)
        img = r.by_tag(tag) if r else None
        if r is None or img is None:
            return None
        img.tags.discard(tag)
        if not img.tags:
            r.images.pop(img.digest, None)
        return img

    def resolve(self, repo: str, tag: str | None, digest: str | None) -> str | None:
        """The digest an image reference names now, or None when ECR does not have it."""
        r = self.repositories.get(repo)
        if r is None:
            return None
        if digest:
            return digest if digest in r.images else None
        img = r.by_tag(tag or "latest")
        return img.digest if img else None

    def exists(self, repo: str, digest: str) -> bool:
        r = self.repositories.get(repo)
        return bool(r and digest in r.images)
