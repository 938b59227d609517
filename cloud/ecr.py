"""Amazon ECR: does an image digest still exist, and which digest does a tag name now?

A restart must know both before it stops anything (aws-facts.md §A1): ECS pins a
deployment's digests, so replacements pull the *running* digest — if an ECR
lifecycle rule deleted it they cannot start (aws/amazon-ecs-agent#4226); and a
new deployment resolves each tag anew, so it keeps the image only while every
tag still names the running digest.
"""
from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from cloud.errors import ACCESS_DENIED_CODES, AWS_ERRORS, AwsError, aws_error, error_code

# <account>.dkr.ecr.<region>.amazonaws.com[.cn]/<repository>[:tag][@digest]
_ECR_URI = re.compile(r"^(?P<account>\d{12})\.dkr\.ecr(?:-fips)?\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(?:\.cn)?/"
                      r"(?P<repo>[a-z0-9][a-z0-9._/-]*?)(?::(?P<tag>[\w][\w.-]{0,127}))?(?:@(?P<digest>sha256:[0-9a-f]+))?$")
_GONE = frozenset({"ImageNotFoundException", "RepositoryNotFoundException"})


@dataclass(frozen=True)
class EcrRef:
    account: str
    region: str
    repo: str
    tag: str  # "" when the image is referenced by digest only
    digest: str  # "" when referenced by tag


def parse_ecr_uri(image: str) -> EcrRef | None:
    """The parts of an ECR image URI; None for any other registry (Docker Hub, GHCR, ...)."""
    m = _ECR_URI.match(image or "")
    if m is None:
        return None
    tag, digest = m["tag"] or "", m["digest"] or ""
    return EcrRef(m["account"], m["region"], m["repo"], tag if tag or digest else "latest", digest)


class ImageCheck(enum.StrEnum):
    SAME = "same"  # the tag still names the running digest (or the image is pinned by digest): it exists
    MOVED = "moved"  # the running digest exists, but the tag now names another one
    GONE = "gone"  # the running digest is no longer in ECR
    UNKNOWN = "unknown"  # not an ECR image, another Region, or ECR could not be asked


@dataclass(frozen=True)
class ImageVerdict:
    container: str
    image: str
    running: str  # the digest the container runs
    check: ImageCheck
    tag_digest: str = ""  # what the tag names now (when known)
    why: str = ""  # for UNKNOWN: why it could not be verified


class EcrImages:
    """DescribeImages through one ECR client (the environment's Region and credentials)."""

    def __init__(self, ecr: Any, region: str) -> None:
        self.ecr, self.region = ecr, region

    def _describe(self, ref: EcrRef, image_id: dict[str, str]) -> str | None:
        """The digest of one image id; None when ECR says it does not exist."""
        try:
            resp = self.ecr.describe_images(registryId=ref.account, repositoryName=ref.repo, imageIds=[image_id])
        except ClientError as e:
            if error_code(e) in _GONE:
                return None
            raise aws_error(e, f"reading image {ref.repo} from ECR") from e
        except AWS_ERRORS as e:
            raise aws_error(e, f"reading image {ref.repo} from ECR") from e
        details = resp.get("imageDetails") or []
        return str(details[0].get("imageDigest", "")) if details else None

    def verify(self, container: str, image: str, running: str) -> ImageVerdict:
        """Whether ``running`` (a container's digest) still exists and is what its tag names now."""
        try:
            return self._verify(container, image, running)
        except AwsError as e:
            if e.code not in ACCESS_DENIED_CODES:
                raise
            # Without ecr:DescribeImages the check is impossible, not failed: the restart then
            # replaces tasks in batches, which reuse the pinned digest.
            return ImageVerdict(container, image, running, ImageCheck.UNKNOWN,
                                why="Valet Key may not read ECR (ecr:DescribeImages)")

    def _verify(self, container: str, image: str, running: str) -> ImageVerdict:
        ref = parse_ecr_uri(image)
        if ref is None:
            return ImageVerdict(container, image, running, ImageCheck.UNKNOWN, why="not an Amazon ECR image")
        if ref.region != self.region or self.ecr is None:
            return ImageVerdict(container, image, running, ImageCheck.UNKNOWN, why=f"ECR in {ref.region}")
        if not running:
            return ImageVerdict(container, image, running, ImageCheck.UNKNOWN, why="no digest reported")
        if self._describe(ref, {"imageDigest": running}) is None:
            return ImageVerdict(container, image, running, ImageCheck.GONE)
        if ref.digest:  # pinned by digest: a new deployment runs exactly that
            same = ref.digest == running
            return ImageVerdict(container, image, running, ImageCheck.SAME if same else ImageCheck.MOVED, ref.digest)
        now = self._describe(ref, {"imageTag": ref.tag}) or ""
        return ImageVerdict(container, image, running, ImageCheck.SAME if now == running else ImageCheck.MOVED, now)
