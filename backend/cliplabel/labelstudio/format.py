"""Label Studio's JSON: the only module that knows its field names.

Converts tasks and `/setup` fields into domain values and predictions into Label Studio results (see
`../shared/LABEL_STUDIO.md` for the wire contract of Label Studio 1.23).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

from cliplabel.core.domain import (
    AnnotatedRegion,
    AnnotationEvent,
    ChoicePrediction,
    DrawnRegion,
    ProjectTask,
    RegionPrediction,
    StoredPrediction,
    TaskPrediction,
)
from cliplabel.core.errors import InvalidRequestError, TaskDataError
from cliplabel.vision import regions

MAX_IMAGE_REF_CHARS = 64 * 1024 * 1024  # data: URIs can be long; the image byte cap applies after decoding


def project_id(project: object) -> str:
    """Label Studio's `project` field (`"<id>.<created_at>"`, or a bare id) → the project id.

    Raises:
        InvalidRequestError: the field is missing or not of that form.
    """
    if isinstance(project, bool) or project is None:
        raise InvalidRequestError("the request has no project")
    if isinstance(project, int):
        return str(project)
    if isinstance(project, str):
        head = project.strip().split(".", 1)[0]
        if head.isdigit():
            return head
    raise InvalidRequestError('project must look like "<id>.<timestamp>" or be an integer id')


def task_id(task: object) -> int | None:
    """The task's integer id, or None when it has none (the result still goes at the task's position)."""
    if isinstance(task, dict):
        value = task.get("id")
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def task_image_ref(task: object, key: str) -> str:
    """The image reference stored under `data[key]` of a task, as Label Studio stored it (URL, path or data URI).

    Raises:
        TaskDataError: the task is not an object, has no `data`, lacks the key, or its value is not a usable string.
    """
    if not isinstance(task, dict):
        raise TaskDataError("the task is not a JSON object")
    data = task.get("data")
    if not isinstance(data, dict):
        raise TaskDataError("the task has no data object")
    if key not in data:
        raise TaskDataError(f"the task's data has no {key!r} key")
    value = data[key]
    if not isinstance(value, str) or not value.strip():
        raise TaskDataError(f"the task's data[{key!r}] is not a non-empty string")
    if len(value) > MAX_IMAGE_REF_CHARS:
        raise TaskDataError(f"the task's data[{key!r}] is longer than {MAX_IMAGE_REF_CHARS} characters")
    return value.strip()


def _result_id(task: int | None, from_name: str, index: int) -> str:
    return hashlib.sha1(f"{task}:{from_name}:{index}".encode()).hexdigest()[:10]


def choice_result(pred: ChoicePrediction, task: int | None, index: int) -> dict[str, Any]:
    """One `choices` result, as Label Studio stores it in a prediction."""
    return {
        "id": _result_id(task, pred.from_name, index),
        "from_name": pred.from_name,
        "to_name": pred.to_name,
        "type": "choices",
        "value": {"choices": list(pred.choices)},
        "score": round(pred.score, 6),
    }


def rectangle_result(region: RegionPrediction, task: int | None, index: int) -> dict[str, Any]:
    """One `rectanglelabels` result: percent of the EXIF-upright image, top-left corner, clamped to [0, 100]."""
    x, y, w, h = regions.to_percent(regions.as_boxes([region.bbox_xyxy])[0], region.image_wh)
    return {
        "id": _result_id(task, region.from_name, index),
        "from_name": region.from_name,
        "to_name": region.to_name,
        "type": "rectanglelabels",
        "original_width": region.image_wh[0],
        "original_height": region.image_wh[1],
        "image_rotation": 0,
        "value": {"x": round(x, 4), "y": round(y, 4), "width": round(w, 4), "height": round(h, 4), "rotation": 0,
                  "rectanglelabels": [region.label]},
        "score": round(region.score, 6),
    }


def prediction_json(pred: TaskPrediction) -> dict[str, Any]:
    """A task's entry in the `/predict` response's `results` (empty `result` and score 0 when nothing predicted)."""
    result = [choice_result(c, pred.task_id, i) for i, c in enumerate(pred.choices)]
    result += [rectangle_result(r, pred.task_id, len(result) + i) for i, r in enumerate(pred.regions)]
    return {"model_version": pred.model_version, "score": round(pred.score, 6), "result": result}


def _number(value: object) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def drawn_regions(params: object) -> list[DrawnRegion]:
    """The regions an annotator drew, from interactive `/predict`'s `params.context.result`.

    Positions stay in percent here; the predictor converts them with the image's size. Malformed entries are
    skipped: the rest of the request is still answered.
    """
    if not isinstance(params, dict) or not isinstance(params.get("context"), dict):
        return []
    results = params["context"].get("result")
    if not isinstance(results, list):
        return []
    out = []
    for item in results:
        if not isinstance(item, dict) or not isinstance(item.get("value"), dict):
            continue
        value, kind = item["value"], str(item.get("type", "")).lower()
        from_name, to_name = item.get("from_name"), item.get("to_name")
        if not isinstance(from_name, str) or not isinstance(to_name, str):
            continue
        x, y = _number(value.get("x")), _number(value.get("y"))
        if x is None or y is None:
            continue
        if kind in ("rectanglelabels", "rectangle"):
            w, h = _number(value.get("width")), _number(value.get("height"))
            if w is None or h is None or w <= 0 or h <= 0:
                continue
            out.append(DrawnRegion(from_name, to_name, "rectangle", box_pct=(x, y, x + w, y + h)))
        elif kind in ("keypointlabels", "keypoint"):
            out.append(DrawnRegion(from_name, to_name, "keypoint", point_pct=(x, y)))
    return out


# The webhook actions feedback learning acts on; others (TASKS_CREATED, …) are acknowledged and ignored. The two
# named ones carry no single annotation; the others carry one (`webhook_annotation_event`).
START_TRAINING = "START_TRAINING"
ANNOTATIONS_DELETED = "ANNOTATIONS_DELETED"
LEARNED_ACTIONS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", ANNOTATIONS_DELETED, START_TRAINING)
# The actions whose annotations are checked against Label Studio's API before they count: the only ones `/webhook`
# takes from a sender without the basic-auth credentials.
CONFIRMABLE_ACTIONS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", ANNOTATIONS_DELETED)


def annotated_regions(result: object) -> tuple[AnnotatedRegion, ...]:
    """Choices and rectangles of an annotation's `result`; other result types and malformed items are skipped."""
    out = []
    for item in result if isinstance(result, list) else []:
        if not isinstance(item, dict) or not isinstance(item.get("value"), dict):
            continue
        from_name, kind, value = item.get("from_name"), str(item.get("type", "")).lower(), item["value"]
        if not isinstance(from_name, str):
            continue
        if kind == "choices" and isinstance(value.get("choices"), list):
            labels = tuple(str(c) for c in value["choices"] if isinstance(c, str))
            if labels:
                out.append(AnnotatedRegion(from_name=from_name, labels=labels))
        elif kind == "rectanglelabels" and isinstance(value.get("rectanglelabels"), list):
            x, y, w, h = (_number(value.get(k)) for k in ("x", "y", "width", "height"))
            labels = tuple(str(c) for c in value["rectanglelabels"] if isinstance(c, str))
            if labels and x is not None and y is not None and w and h and w > 0 and h > 0:
                out.append(AnnotatedRegion(from_name=from_name, labels=labels, box_pct=(x, y, x + w, y + h)))
    return tuple(out)


def scored_labels(result: object) -> list[tuple[str, str, float | None]]:
    """(control, label, score) for every labelled item of a prediction's or annotation's `result`."""
    out: list[tuple[str, str, float | None]] = []
    for item in result if isinstance(result, list) else []:
        if not isinstance(item, dict) or not isinstance(item.get("value"), dict):
            continue
        from_name, kind = item.get("from_name"), str(item.get("type", "")).lower()
        labels = item["value"].get(kind) if kind in ("choices", "rectanglelabels") else None
        if isinstance(from_name, str) and isinstance(labels, list):
            out.extend((from_name, str(label), _number(item.get("score"))) for label in labels if isinstance(label, str))
    return out


def annotation_event(annotation: object, task: object, project: object, confirmed: bool = False) -> AnnotationEvent:
    """An annotation from a webhook payload (or an export's task) as a domain event.

    Args:
        confirmed: the annotation comes from Label Studio's API (an export), not from a webhook's body.

    Raises:
        InvalidRequestError: no annotation id, or no project.
    """
    if not isinstance(annotation, dict) or not isinstance(annotation.get("id"), int):
        raise InvalidRequestError("the annotation has no integer id")
    pid = project_id(project.get("id") if isinstance(project, dict) else project)
    task_obj = task if isinstance(task, dict) else {}
    raw_data = task_obj.get("data")
    data: dict[str, object] = raw_data if isinstance(raw_data, dict) else {}
    tid = task_id(task_obj) if task_obj else (annotation.get("task") if isinstance(annotation.get("task"), int) else None)
    return AnnotationEvent(project_id=pid, annotation_id=int(annotation["id"]), task_id=tid, task_data=dict(data),
                           regions=annotated_regions(annotation.get("result")),
                           cancelled=bool(annotation.get("was_cancelled", False)), confirmed=confirmed,
                           parent_prediction=_int(annotation.get("parent_prediction")))


def stored_annotation(body: object) -> AnnotationEvent:
    """`GET /api/annotations/{id}`: the annotation as Label Studio stores it, with its `task` and `project` ids (the
    task's data is not part of it: `task_data` is empty until the task is fetched).

    Raises:
        InvalidRequestError: no integer id, task or project.
    """
    if not isinstance(body, dict) or not isinstance(body.get("task"), int) or isinstance(body.get("task"), bool):
        raise InvalidRequestError("Label Studio's annotation has no task id")
    project = body.get("project")
    if not isinstance(project, int) or isinstance(project, bool):
        raise InvalidRequestError("Label Studio's annotation has no project id")
    return annotation_event(body, None, project, confirmed=True)


def deleted_annotation_ids(payload: dict[str, Any]) -> list[int]:
    """`ANNOTATIONS_DELETED` carries `annotations: [{"id": …}, …]` (plural)."""
    items = payload.get("annotations")
    return [int(a["id"]) for a in items if isinstance(a, dict) and isinstance(a.get("id"), int)] \
        if isinstance(items, list) else []


def webhook_project(payload: dict[str, Any]) -> str:
    """The project id of a webhook payload (`project` is an object there, `{"id": …}`)."""
    project = payload.get("project")
    return project_id(project.get("id") if isinstance(project, dict) else project)


def webhook_action(payload: dict[str, Any]) -> str:
    """The `action` of a webhook payload, as text whatever was sent."""
    return str(payload.get("action"))


def webhook_annotation_event(payload: dict[str, Any]) -> AnnotationEvent:
    """The annotation an `ANNOTATION_CREATED`/`_UPDATED` webhook carries, with its task and project.

    Raises:
        InvalidRequestError: no annotation id, or no project.
    """
    return annotation_event(payload.get("annotation"), payload.get("task"), payload.get("project"))


def exported_events(tasks: Iterable[object], project: object) -> list[AnnotationEvent | InvalidRequestError]:
    """Every annotation of Label Studio's JSON export (tasks with their `annotations`), in order, as an event; a
    malformed one as the error that says why, so the others still count."""
    out: list[AnnotationEvent | InvalidRequestError] = []
    for task in tasks:
        annotations = task.get("annotations") if isinstance(task, dict) else None
        for annotation in annotations if isinstance(annotations, list) else []:
            try:
                out.append(annotation_event(annotation, task, project, confirmed=True))
            except InvalidRequestError as exc:
                out.append(exc)
    return out


def event_task(event: AnnotationEvent) -> dict[str, Any]:
    """The task an annotation event came with, in the form tasks have in `/predict` (for fetching its image)."""
    return {"id": event.task_id, "data": event.task_data}


# -- a project's tasks and predictions through Label Studio's API (bulk jobs, the quality report) -------------------
def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def listed_tasks(body: object) -> list[object]:
    """The tasks of one page of `GET /api/tasks` (an object with `tasks`, or a bare list from older versions)."""
    tasks = body.get("tasks", []) if isinstance(body, dict) else body
    return tasks if isinstance(tasks, list) else []


def project_task(task: object) -> ProjectTask | None:
    """A task of `GET /api/tasks` as a domain value; None when it has no integer id.

    Label Studio counts annotations in `total_annotations` (skipped ones included, `cancelled_annotations` of
    them); without the count, the listed `annotations` are counted instead.
    """
    tid = task_id(task)
    if tid is None or not isinstance(task, dict):
        return None
    data = task.get("data")
    total = task.get("total_annotations")
    if isinstance(total, int) and not isinstance(total, bool):
        annotations, cancelled = total, _count(task.get("cancelled_annotations"))
    else:
        listed = task.get("annotations")
        annotations, cancelled = (len(listed) if isinstance(listed, list) else 0), 0
    return ProjectTask(task_id=tid, data=dict(data) if isinstance(data, dict) else {}, annotations=annotations,
                       cancelled_annotations=cancelled)


def prediction_task(task: ProjectTask) -> dict[str, Any]:
    """A project's task in the form `/predict` receives tasks (prediction reads its image reference from it)."""
    return {"id": task.task_id, "data": dict(task.data)}


def task_prediction_versions(task: object) -> tuple[int, set[str]] | None:
    """(task id, model versions of the predictions it holds) of a task listed with `fields=all`; None without an id."""
    tid = task_id(task)
    if tid is None or not isinstance(task, dict):
        return None
    versions = task.get("predictions_model_versions") or []
    if isinstance(versions, str):
        versions = versions.split(",")
    return tid, {str(v).strip() for v in versions if str(v).strip()} if isinstance(versions, list) else set()


def stored_predictions(body: object) -> list[StoredPrediction]:
    """The predictions of `GET /api/predictions` (any model version); entries that are not objects are skipped."""
    out = []
    for item in body if isinstance(body, list) else []:
        if not isinstance(item, dict):
            continue
        task, version = item.get("task"), item.get("model_version")
        out.append(StoredPrediction(task_id=task if isinstance(task, int) and not isinstance(task, bool) else None,
                                    model_version=version if isinstance(version, str) else None,
                                    labels=tuple(scored_labels(item.get("result"))),
                                    prediction_id=_int(item.get("id")), score=_number(item.get("score")),
                                    cluster=_int(item.get("cluster"))))
    return out


def prediction_import(task_id: int, pred: TaskPrediction) -> dict[str, Any]:
    """A prediction as Label Studio's import endpoints take it: the `/predict` entry plus its `task`."""
    return {"task": task_id, **prediction_json(pred)}


def project_label_config(project: object) -> str:
    """The label config (XML) of `GET /api/projects/{id}`; empty when the project has none."""
    value = project.get("label_config") if isinstance(project, dict) else None
    return "" if value is None else str(value)


# -- review the uncertain first: placement on predictions, sampling, Data Manager views (`services.review`) ----------
# Label Studio's project setting that serves, among tasks holding predictions of the project's `model_version`, the
# one with the lowest prediction score from the cluster the annotator solved least (`projects/functions/next_task.py`).
UNCERTAINTY_SAMPLING = "Uncertainty sampling"


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def prediction_placement(cluster: int | None, neighbors: Iterable[int] = ()) -> dict[str, Any]:
    """`PATCH /api/predictions/{id}`: a prediction's `cluster` (int) and `neighbors` (task ids), each only when known.

    Label Studio 1.23 stores them only through its prediction serializer (`POST /api/predictions`, this `PATCH`):
    the live `/predict` path keeps `result`, `score` and `model_version`, and the bulk
    `/api/projects/{id}/import/predictions` builds each prediction from those fields alone (`data_import/api.py`),
    dropping the rest (seen on the wire: `tests/e2e/test_review.py`)."""
    out: dict[str, Any] = {} if cluster is None else {"cluster": int(cluster)}
    near = [int(t) for t in neighbors]
    if near:
        out["neighbors"] = near
    return out


def uncertainty_sampling(model_version: str) -> dict[str, Any]:
    """`PATCH /api/projects/{id}`: uncertainty sampling over the predictions of `model_version` (Label Studio samples
    only among tasks holding a prediction of the project's `model_version`)."""
    return {"sampling": UNCERTAINTY_SAMPLING, "model_version": model_version}


def project_sampling(project: object) -> tuple[str | None, str | None]:
    """(sampling, model_version) of `GET /api/projects/{id}`."""
    if not isinstance(project, dict):
        return None, None
    sampling, version = project.get("sampling"), project.get("model_version")
    return (sampling if isinstance(sampling, str) else None), (version if isinstance(version, str) else None)


def least_certain_view(title: str, model_version: str) -> dict[str, Any]:
    """A Data Manager tab's `data`: the tasks without annotations that hold a prediction of `model_version`, lowest
    prediction score first, with the score column shown."""
    return {"title": title, "ordering": ["tasks:predictions_score"],
            "filters": {"conjunction": "and", "items": [
                {"filter": "filter:tasks:total_annotations", "operator": "equal", "type": "Number", "value": 0},
                # a list: Label Studio ORs one `predictions__model_version__contains` per item (a string would be
                # taken letter by letter)
                {"filter": "filter:tasks:predictions_model_versions", "operator": "contains", "type": "List",
                 "value": [model_version]}]},
            "hiddenColumns": {"explore": [], "labeling": []}}


def view_request(project_id: int, data: dict[str, Any]) -> dict[str, Any]:
    """The body of `POST /api/dm/views` (and `PATCH /api/dm/views/{id}`)."""
    return {"project": project_id, "data": data}


def listed_views(body: object) -> list[tuple[int, str]]:
    """(id, title) of each view of `GET /api/dm/views?project=…` (a list, or a page with `results`)."""
    items = body.get("results", []) if isinstance(body, dict) else body
    out = []
    for item in items if isinstance(items, list) else []:
        if isinstance(item, dict) and _int(item.get("id")) is not None:
            data = item.get("data")
            title = data.get("title") if isinstance(data, dict) else None
            out.append((int(item["id"]), title if isinstance(title, str) else ""))
    return out


def view_id(body: object) -> int:
    """The id of the view `POST /api/dm/views` created.

    Raises:
        InvalidRequestError: the answer has no integer id.
    """
    found = _int(body.get("id")) if isinstance(body, dict) else None
    if found is None:
        raise InvalidRequestError("Label Studio's answer to creating a view has no id")
    return found


# -- auto-accept and the label audit (`services.accept`, `services.audit`) -------------------------------------------
# Auto-accepted annotations are made by Label Studio's own Data Manager action "Create Annotations From Predictions"
# (`data_manager/actions/predictions_to_annotations.py`) from predictions stored for that purpose under their own
# model version; the annotation links its prediction (`parent_prediction`). The open-source edition stamps nothing
# else on it (its `last_action` stays null), and its webhook is ANNOTATIONS_CREATED (plural), which feedback
# learning does not take.
PREDICTIONS_TO_ANNOTATIONS = "predictions_to_annotations"


def predictions_to_annotations_request(task_ids: Iterable[int], model_version: str) -> dict[str, Any]:
    """The body of `POST /api/dm/actions?id=predictions_to_annotations&project=…`: these tasks, this version only."""
    return {"selectedItems": {"all": False, "included": [int(t) for t in task_ids]}, "model_version": model_version}


def listed_annotations(annotations: object, from_name: str) -> list[tuple[int, tuple[str, ...], int | None]]:
    """(annotation id, labels chosen for `from_name` (none when skipped), `parent_prediction`) of a list of
    annotations (a task's in the export, or `GET /api/tasks/{id}/annotations`); entries without an id are left out."""
    out: list[tuple[int, tuple[str, ...], int | None]] = []
    for ann in annotations if isinstance(annotations, list) else []:
        if not isinstance(ann, dict) or _int(ann.get("id")) is None:
            continue
        labels = () if ann.get("was_cancelled") else next(
            (r.labels for r in annotated_regions(ann.get("result")) if r.from_name == from_name
             and r.box_pct is None), ())
        out.append((int(ann["id"]), labels, _int(ann.get("parent_prediction"))))
    return out


def exported_choices(tasks: Iterable[object], from_name: str) -> list[tuple[int, int, tuple[str, ...], int | None]]:
    """(task id, annotation id, labels chosen for `from_name`, `parent_prediction`) of every annotation in Label
    Studio's JSON export, a skipped one with no labels; tasks without an integer id are left out."""
    out: list[tuple[int, int, tuple[str, ...], int | None]] = []
    for task in tasks:
        tid = task_id(task)
        if tid is None or not isinstance(task, dict):
            continue
        out.extend((tid, aid, labels, parent) for aid, labels, parent in listed_annotations(task.get("annotations"),
                                                                                              from_name))
    return out


def mislabeling_update(value: float) -> dict[str, Any]:
    """`PATCH /api/predictions/{id}`: the prediction's `mislabeling` score."""
    return {"mislabeling": round(float(value), 6)}


def task_ids_view(title: str, task_ids: Iterable[int]) -> dict[str, Any]:
    """A Data Manager tab's `data`: exactly these tasks (an `or` of id filters: the filters have no list operator)."""
    return {"title": title, "ordering": ["tasks:id"],
            "filters": {"conjunction": "or", "items": [
                {"filter": "filter:tasks:id", "operator": "equal", "type": "Number", "value": int(t)}
                for t in task_ids]},
            "hiddenColumns": {"explore": [], "labeling": []}}

