"""NovitaClient: the Novita GPU-instance API (`/gpu-instance/openapi/v1`) as typed Python calls.

Retry policy, from docs/novita-api.md §12 and from what each call can do twice without harm:
- GETs are retried on 429, 5xx, timeouts and connection errors.
- start/stop/restart/delete are retried the same way. Their effect is idempotent but their answer is not: if
  an earlier attempt may have acted (5xx, lost answer), "invalid state change" (and, for delete, not-found)
  on a later attempt means that earlier attempt worked, so it counts as success. Callers poll anyway.
- A delete is done only when a read after it shows the instance removing or removed, or Novita's envelope
  says it is not found: an answer alone (least of all an HTML 404 from a proxy) proves nothing.
- create is retried only when the request provably did not take effect (429, connection never made).
  Anything ambiguous raises CreateOutcomeUnknownError: the caller looks the instance up by name instead of
  creating a duplicate.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from gpujobs import __version__
from gpujobs.novita import spec
from gpujobs.novita.create_request import CreateInstanceRequest
from gpujobs.novita.errors import (
    CreateOutcomeUnknownError,
    DeleteUnconfirmedError,
    InvalidStateError,
    NovitaConnectionError,
    NovitaError,
    NovitaNotFoundError,
    NovitaPermanentError,
    NovitaProtocolError,
    NovitaServerError,
    NovitaTransientError,
    NovitaUnrecognizedAnswerError,
    RateLimitedError,
)
from gpujobs.novita.transport import CallObserver, RetryPolicy, Transport
from gpujobs.novita.types import Cluster, Instance, Json, Product, RegistryAuth, Template, parse_int

logger = logging.getLogger("gpujobs.novita")

T = TypeVar("T")

DEFAULT_PAGE_SIZE = 100
# Far above any real account; stops a server that ignores pageNum from looping us forever.
MAX_LIST_PAGES = 50
# A page that adds no new ids can be a 1-based server repeating page 1 for pageNum 0 and 1; two in a row
# means the server is not paging at all.
MAX_PAGES_WITHOUT_NEW_IDS = 2


# An explicit User-Agent avoids Cloudflare's 1010 block of library defaults (§1, §13.13).
DEFAULT_USER_AGENT = f"gpujobs/{__version__}"


def _is_transient(exc: BaseException) -> bool:
    return isinstance(exc, NovitaTransientError)


def _may_have_acted(exc: BaseException) -> bool:
    """Whether a failed attempt may still have reached Novita and changed something."""
    if isinstance(exc, NovitaConnectionError):
        return exc.request_sent
    return isinstance(exc, NovitaServerError)


def _create_can_retry(exc: BaseException) -> bool:
    return isinstance(exc, RateLimitedError) or (
        isinstance(exc, NovitaConnectionError) and not exc.request_sent
    )


def _items(data: Json, key: str) -> list[Json]:
    value = data.get(key)
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


class NovitaClient:
    """A thread-confined client (one requests.Session); create one per worker process or thread."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        connect_timeout_seconds: float = 5.0,
        read_timeout_seconds: float = 30.0,
        max_attempts: int = 4,
        user_agent: str = DEFAULT_USER_AGENT,
        backoff_initial_seconds: float = 0.5,
        backoff_max_seconds: float = 8.0,
        on_call: CallObserver | None = None,
    ) -> None:
        self._transport = Transport(
            base_url,
            api_key,
            connect_timeout_seconds=connect_timeout_seconds,
            read_timeout_seconds=read_timeout_seconds,
            user_agent=user_agent,
            on_call=on_call,
        )
        self._retry = RetryPolicy(
            max_attempts=max_attempts,
            backoff_initial_seconds=backoff_initial_seconds,
            backoff_max_seconds=backoff_max_seconds,
        )

    def __repr__(self) -> str:
        # The API key must never show up in logs or tracebacks that print the client.
        return f"NovitaClient(base_url={self.base_url!r})"

    @property
    def base_url(self) -> str:
        """The API base URL this client calls (no trailing slash)."""
        return self._transport.base_url

    def __enter__(self) -> NovitaClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Release pooled connections."""
        self._transport.close()

    def _get(self, path: str, params: dict[str, Any] | None = None) -> Json:
        return self._retried(_is_transient, lambda: self._transport.request("GET", path, params=params))

    def _retried(self, retry_on: Callable[[BaseException], bool], attempt: Callable[[], T]) -> T:
        return self._retry.retrying(retry_on)(attempt)

    # Catalogue ------------------------------------------------------------------------------------------

    def list_clusters(self) -> list[Cluster]:
        """Clusters (regions); map product region strings to cluster ids through these, never compute ids."""
        return [Cluster.from_json(item) for item in _items(self._get(spec.CLUSTERS_PATH), "data")]

    def list_products(
        self,
        product_name: str | None = None,
        cluster_id: str | None = None,
        *,
        gpu_num: int | None = None,
        billing_method: str | None = None,
    ) -> list[Product]:
        """GPU products with price and stock; with `cluster_id`, stock describes that cluster only."""
        params = {
            "productName": product_name,
            "clusterId": cluster_id,
            "gpuNum": gpu_num,
            "billingMethod": billing_method,
        }
        data = self._get(
            spec.PRODUCTS_PATH, {key: value for key, value in params.items() if value is not None}
        )
        return [Product.from_json(item, cluster_id=cluster_id) for item in _items(data, "data")]

    def get_template(self, template_id: str) -> Template:
        """A template, to build a create request from (see CreateInstanceRequest.from_template)."""
        data = self._get(spec.TEMPLATE_PATH, {spec.TEMPLATE_ID_PARAM: template_id})
        template = data.get("template")
        if not isinstance(template, dict):
            raise NovitaNotFoundError(f"Novita returned no template for id {template_id!r}")
        return Template.from_json(template)

    def list_registry_auths(self) -> list[RegistryAuth]:
        """Stored container-registry credentials (passwords included, kept out of repr)."""
        return [RegistryAuth.from_json(item) for item in _items(self._get(spec.REGISTRY_AUTHS_PATH), "data")]

    def get_registry_auth_credential(self, auth_id: str) -> str:
        """The `username:password` for a registry-auth id, as create-instance's `imageAuth` wants it."""
        for auth in self.list_registry_auths():
            if auth.id == auth_id:
                return auth.credential
        raise NovitaNotFoundError(f"no Novita registry auth with id {auth_id!r}")

    # Instances ------------------------------------------------------------------------------------------

    def create_instance(self, request: CreateInstanceRequest) -> str:
        """Create an instance and return its id; never blindly retried, see the module docstring."""

        def outcome_unknown(cause: str, exc: NovitaError | None = None) -> CreateOutcomeUnknownError:
            return CreateOutcomeUnknownError(
                f"create of instance {request.name!r} may or may not have happened ({cause}); "
                "look it up by name before creating again",
                http_status=exc.http_status if exc else None,
                retry_after_seconds=exc.retry_after_seconds
                if isinstance(exc, NovitaTransientError)
                else None,
            )

        def attempt() -> str:
            try:
                data = self._transport.request("POST", spec.INSTANCE_CREATE_PATH, body=request.to_json())
            except (
                NovitaServerError,
                NovitaConnectionError,
                NovitaProtocolError,
                NovitaUnrecognizedAnswerError,  # a proxy's 404 may stand for an answer that was lost
            ) as exc:
                if _create_can_retry(exc):
                    raise
                raise outcome_unknown(str(exc), exc) from exc
            instance_id = data.get("id")
            if not instance_id:
                # A 2xx means Novita accepted the create, so an instance may well exist without its id.
                raise outcome_unknown("a success answer without an instance id")
            return str(instance_id)

        return self._retried(_create_can_retry, attempt)

    def get_instance(self, instance_id: str) -> Instance:
        """One instance; NovitaNotFoundError only when Novita's error envelope says it does not exist.

        A success answer without an id is not that evidence (a cache or proxy can answer `{}` too): it is
        NovitaUnrecognizedAnswerError, transient, and the caller looks again.
        """
        data = self._get(spec.INSTANCE_PATH, {spec.INSTANCE_ID_PARAM: instance_id})
        if not data.get("id"):
            raise NovitaUnrecognizedAnswerError(
                f"Novita GET {spec.INSTANCE_PATH} answered without an instance id for {instance_id!r}; "
                "not read as gone"
            )
        return Instance.from_json(data)

    def list_instances(
        self,
        *,
        page_size: int = DEFAULT_PAGE_SIZE,
        name: str | None = None,
        product_name: str | None = None,
        status: str | None = None,
        max_pages: int = MAX_LIST_PAGES,
    ) -> list[Instance]:
        """All instances matching the filters (`name` is fuzzy), paged via pageNum/pageSize, de-duplicated."""
        filters = {"name": name, "productName": product_name, "status": status}
        params = {key: value for key, value in filters.items() if value is not None}
        found: dict[str, Instance] = {}
        pages_without_new_ids = 0
        # Whether pageNum counts from 0 or 1 is undocumented (§7): start at 0 and let de-duplication absorb
        # a 1-based server answering page 1 twice.
        for page_num in range(max_pages):
            data = self._get(
                spec.INSTANCES_PATH,
                {**params, spec.PAGE_NUM_PARAM: page_num, spec.PAGE_SIZE_PARAM: page_size},
            )
            items = _items(data, "instances")
            total = parse_int(data.get("total"))
            before = len(found)
            found.update((item.id, item) for item in map(Instance.from_json, items) if item.id)
            if total is not None and len(found) >= total:
                break
            if not items:
                # A 1-based server may answer pageNum 0 with an empty page although instances exist.
                if page_num == 0 and total:
                    continue
                break
            pages_without_new_ids = 0 if len(found) > before else pages_without_new_ids + 1
            if pages_without_new_ids >= MAX_PAGES_WITHOUT_NEW_IDS:
                break
        else:
            logger.warning(
                "novita list_instances stopped at the %d-page cap with %d instances", max_pages, len(found)
            )
        return list(found.values())

    def find_instances_by_name(self, name: str) -> list[Instance]:
        """Instances named exactly `name` (the server filter is fuzzy); the basis of create idempotency."""
        return [instance for instance in self.list_instances(name=name) if instance.name == name]

    def start_instance(self, instance_id: str) -> None:
        """Start an `exited` instance; may raise InsufficientResourceError if its GPU was taken meanwhile."""
        self._action(spec.INSTANCE_START_PATH, instance_id, done_if=(InvalidStateError,))

    def stop_instance(self, instance_id: str) -> None:
        """Stop a running instance (GPU billing stops at `exited`)."""
        self._action(spec.INSTANCE_STOP_PATH, instance_id, done_if=(InvalidStateError,))

    def restart_instance(self, instance_id: str) -> None:
        """Restart a running instance."""
        self._action(spec.INSTANCE_RESTART_PATH, instance_id, done_if=(InvalidStateError,))

    def delete_instance(self, instance_id: str) -> None:
        """Delete (release) an instance in any state; returns once a read shows it removing or removed.

        Raises NovitaNotFoundError when Novita's envelope says there is no such instance (already gone),
        DeleteUnconfirmedError (transient) when the delete was taken but a read does not show removal yet,
        and a refusal (e.g. PREPAID_INSTANCE_NOT_SUPPORT_RELEASE) when the read shows it staying.
        """
        try:
            self._action(
                spec.INSTANCE_DELETE_PATH, instance_id, done_if=(InvalidStateError, NovitaNotFoundError)
            )
        except InvalidStateError:
            # Refused, or already on its way out (a delete of a `removing` instance): the read tells which.
            if not self._removal_seen(instance_id):
                raise
            return
        if not self._removal_seen(instance_id):
            raise DeleteUnconfirmedError(
                f"Novita took the delete of instance {instance_id!r}, "
                "but a read does not show it removing yet"
            )

    def _removal_seen(self, instance_id: str) -> bool:
        """Whether a fresh read shows the instance removing or removed, or Novita says it is not found."""
        try:
            return self.get_instance(instance_id).is_being_removed
        except NovitaNotFoundError:
            return True

    def migrate_instance(self, instance_id: str) -> None:
        """Move an `exited` reclaimed spot instance to another node (same id); it goes `migrating` and
        runs again, or Novita answers MIGRATE_INSUFFICIENT_RESOURCE (InsufficientResourceError)."""
        self._action(spec.INSTANCE_MIGRATE_PATH, instance_id, done_if=(InvalidStateError,))

    def _action(
        self, path: str, instance_id: str, *, done_if: tuple[type[NovitaPermanentError], ...]
    ) -> None:
        """POST an action; its answer body is undocumented and ignored (§13.10)."""
        earlier_attempt_may_have_acted = False

        def attempt() -> None:
            nonlocal earlier_attempt_may_have_acted
            try:
                self._transport.request("POST", path, body={spec.INSTANCE_ID_PARAM: instance_id})
            except done_if as exc:
                if not earlier_attempt_may_have_acted:
                    raise
                logger.debug(
                    "novita POST %s: %s after an ambiguous attempt, counted as done", path, exc.reason
                )
            except NovitaProtocolError as exc:
                # A 2xx is "accepted" whatever its body (§8); the caller's reads tell whether it acted.
                logger.warning("%s; the action counts as accepted", exc)
            except NovitaTransientError as exc:
                earlier_attempt_may_have_acted = earlier_attempt_may_have_acted or _may_have_acted(exc)
                raise

        self._retried(_is_transient, attempt)
