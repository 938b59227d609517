"""ECR and elbv2 calls the simulator answers for the repositories and target groups it models."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from moto.core.responses import ActionResult

from .ecr import Image, Registry
from .errors import ImageNotFoundException
from .simulator import Simulator
from .tasks import ts

Original = Callable[[Any], ActionResult]  # moto's own handler


def _registry(sim: Simulator, resp: Any) -> Registry:
    return sim.region(resp.region, resp.current_account).registry


def _detail(reg: Registry, repo: str, img: Image) -> dict[str, Any]:
    out: dict[str, Any] = {
        "registryId": reg.account, "repositoryName": repo, "imageDigest": img.digest,
        "imageSizeInBytes": img.size, "imagePushedAt": ts(img.pushed_at),
        "imageManifestMediaType": "application/vnd.docker.distribution.manifest.v2+json",
    }
    if img.tags:  # ECR leaves imageTags out for untagged images
        out["imageTags"] = sorted(img.tags)
    return out


def _missing(reg: Registry, repo: str, image_id: dict[str, str]) -> str:
    return (f"The image with imageId {{imageDigest:'{image_id.get('imageDigest') or 'null'}', "
            f"imageTag:'{image_id.get('imageTag') or 'null'}'}} does not exist within the repository with "
            f"name '{repo}' in the registry with id '{reg.account}'")


def _find(reg: Registry, repo: str, image_id: dict[str, str]) -> Image | None:
    r = reg.repositories[repo]
    if image_id.get("imageDigest"):
        img = r.images.get(image_id["imageDigest"])
        if img is not None and image_id.get("imageTag") and image_id["imageTag"] not in img.tags:
            return None
        return img
    return r.by_tag(image_id.get("imageTag") or "")


def describe_images(sim: Simulator, resp: Any, original: Original) -> ActionResult:
    reg, repo = _registry(sim, resp), resp._get_param("repositoryName")
    if repo not in reg.repositories:
        return original(resp)  # a repository made through moto: moto answers
    ids = resp._get_param("imageIds")
    if ids:
        details = []
        for image_id in ids:
            img = _find(reg, repo, image_id)
            if img is None:
                raise ImageNotFoundException(_missing(reg, repo, image_id))
            details.append(_detail(reg, repo, img))
    else:
        status = (resp._get_param("filter") or {}).get("tagStatus", "ANY")
        details = [_detail(reg, repo, i) for i in reg.repositories[repo].images.values()
                   if status == "ANY" or (status == "TAGGED") == bool(i.tags)]
    return ActionResult({"imageDetails": details})


def list_images(sim: Simulator, resp: Any, original: Original) -> ActionResult:
    reg, repo = _registry(sim, resp), resp._get_param("repositoryName")
    if repo not in reg.repositories:
        return original(resp)
    ids: list[dict[str, str]] = []
    for img in reg.repositories[repo].images.values():
        ids += [{"imageDigest": img.digest, "imageTag": t} for t in sorted(img.tags)] or [{"imageDigest": img.digest}]
    return ActionResult({"imageIds": ids})


def batch_delete_image(sim: Simulator, resp: Any, original: Original) -> ActionResult:
    reg, repo = _registry(sim, resp), resp._get_param("repositoryName")
    if repo not in reg.repositories:
        return original(resp)
    deleted: list[dict[str, str]] = []
    failures: list[dict[str, Any]] = []
    for image_id in resp._get_param("imageIds") or []:
        img = _find(reg, repo, image_id)
        if img is None:
            failures.append({"imageId": image_id, "failureCode": "ImageNotFound",
                             "failureReason": "Requested image not found"})
        elif image_id.get("imageDigest"):
            reg.delete_digest(repo, img.digest)
            deleted += [{"imageDigest": img.digest, "imageTag": t} for t in sorted(img.tags)] or [
                {"imageDigest": img.digest}]
        else:
            # By tag: the tag goes; an image left untagged is deleted with it.
            reg.untag(repo, image_id["imageTag"])
            deleted.append({"imageDigest": img.digest, "imageTag": image_id["imageTag"]})
    return ActionResult({"imageIds": deleted, "failures": failures})


def describe_target_health(sim: Simulator, resp: Any, original: Original) -> ActionResult:
    rs = sim.region(resp.region, resp.current_account)
    tg = resp._get_param("TargetGroupArn")
    services = rs.target_group_services(tg)
    if not services:
        return original(resp)
    wanted = {(t.get("Id"), int(t["Port"]) if t.get("Port") else None) for t in resp._get_param("Targets") or []}
    out: list[dict[str, Any]] = []
    for svc in services:
        for task in rs.tasks_of(svc):
            for reg in task.targets:
                if reg.target_group_arn != tg or not reg.registered:
                    continue
                if wanted and (reg.ip, reg.port) not in wanted and (reg.ip, None) not in wanted:
                    continue
                health: dict[str, str] = {"State": str(reg.state)}
                if reg.state == "initial":
                    health.update(Reason="Elb.RegistrationInProgress", Description="Target registration is in progress")
                elif reg.state == "draining":
                    health.update(Reason="Target.DeregistrationInProgress",
                                  Description="Target deregistration is in progress")
                out.append({"Target": {"Id": reg.ip, "Port": reg.port, "AvailabilityZone": f"{rs.region}a"},
                            "HealthCheckPort": str(reg.port), "TargetHealth": health})
    return ActionResult({"TargetHealthDescriptions": out})


ECR_HANDLERS: dict[str, Callable[[Simulator, Any, Original], ActionResult]] = {
    "describe_images": describe_images, "list_images": list_images, "batch_delete_image": batch_delete_image,
}
ELBV2_HANDLERS: dict[str, Callable[[Simulator, Any, Original], ActionResult]] = {
    "describe_target_health": describe_target_health,
}
