"""`mode: subscribe`: monitored items in one subscription, changes pushed by the server.

After a reconnect the supervisor opens a new session and `run` creates the subscription
again; the server sends every item's current value as its first notification, and asyncua
registers the items before asking for them, so none of those first values is dropped.
"""

from __future__ import annotations

from asyncua import ua
from asyncua.common.subscription import DataChangeEvent, StatusChangeEvent, Subscription

from gateway.driver import Emit, StreamingDriver
from gateway.errors import TransientError
from gateway.model import Reading

from .convert import status_name
from .driver import OpcUaDriver
from .options import NodeSpec
from .session import classify

DEADBAND_TYPES = {"absolute": ua.DeadbandType.Absolute, "percent": ua.DeadbandType.Percent}


class SubscribedOpcUa(OpcUaDriver, StreamingDriver):
    """Emits a reading for every data change the server reports."""

    resolve_every = 30.0
    """Seconds between lookups of browse paths not found (a PLC program being loaded)."""

    def _request(self, handle: int, spec: NodeSpec,
                 node: ua.NodeId) -> ua.MonitoredItemCreateRequest:
        o = self.o
        sampling = spec.sampling_interval
        if sampling is None:
            sampling = o.sampling_interval if o.sampling_interval is not None \
                else o.publishing_interval
        params = ua.MonitoringParameters(ClientHandle=handle, SamplingInterval=sampling * 1000,
                                         QueueSize=1, DiscardOldest=True)
        if spec.deadband is not None:
            params.Filter = ua.DataChangeFilter(
                Trigger=ua.DataChangeTrigger.StatusValue,
                DeadbandType=DEADBAND_TYPES[spec.deadband_type], DeadbandValue=spec.deadband)
        return ua.MonitoredItemCreateRequest(
            ItemToMonitor=ua.ReadValueId(NodeId=node, AttributeId=ua.AttributeIds.Value),
            MonitoringMode=ua.MonitoringMode.Reporting, RequestedParameters=params)

    async def _add_items(self, sub: Subscription, handles: dict[int, NodeSpec],
                         refused: set[str]) -> list[Reading]:
        """Monitored items for resolved nodes not monitored yet; bad readings for the rest.

        A node's client handle is its position in the config (1-based), so a late one gets
        the same handle whenever it is added.
        """
        o = self.o
        todo: list[tuple[int, NodeSpec]] = []
        requests: list[ua.MonitoredItemCreateRequest] = []
        for i, spec in enumerate(o.nodes, start=1):
            node = self.ids[spec.name]
            if node is not None and i not in handles and spec.name not in refused:
                todo.append((i, spec))
                requests.append(self._request(i, spec, node))
        try:
            results = await sub.create_monitored_items(requests) if requests else []
        except Exception as exc:  # noqa: BLE001 - classified
            raise classify(exc, f"{o.endpoint}: CreateMonitoredItems") from None
        bad: list[Reading] = []
        for (i, spec), res in zip(todo, results, strict=True):
            if isinstance(res, ua.StatusCode):
                refused.add(spec.name)
                self.ctx.log.warning("monitored item refused by the server; reported bad",
                                     node=spec.name, where=spec.where(),
                                     status=status_name(int(res.value)))
                bad.append(self.bad(spec))
            else:
                handles[i] = spec
        return bad

    def _unresolved(self) -> list[NodeSpec]:
        return [s for s in self.o.nodes if self.ids[s.name] is None]

    async def run(self, emit: Emit) -> None:
        """Create the subscription and emit changes until the connection is lost.

        Nodes whose browse path is not found are reported bad and looked up again every
        `resolve_every` seconds; found, they join the subscription.
        """
        o = self.o
        client = self.connected()
        try:
            sub = await client.create_subscription(
                o.publishing_interval * 1000, None,
                queue_maxsize=max(1000, 20 * len(o.nodes)))
        except Exception as exc:  # noqa: BLE001 - classified
            raise classify(exc, f"{o.endpoint}: CreateSubscription") from None
        handles: dict[int, NodeSpec] = {}
        refused: set[str] = set()
        initial = await self._add_items(sub, handles, refused)
        initial += [self.bad(s) for s in self._unresolved()]
        self.ctx.log.info("subscribed", items=len(handles),
                          publishing_interval=o.publishing_interval)
        if initial:
            emit(initial)
        try:
            while True:
                event = await sub.next_event(self.resolve_every if self._unresolved()
                                             else None)
                if event is None:  # a late node may have appeared
                    await self.resolve()
                    late = await self._add_items(sub, handles, refused)
                    emit(late + [self.bad(s) for s in self._unresolved()])
                elif isinstance(event, DataChangeEvent):
                    item = event.data.monitored_item
                    spec = handles.get(item.ClientHandle)
                    if spec is not None and item.Value is not None:
                        emit([self.reading(spec, item.Value)])
                elif isinstance(event, StatusChangeEvent):
                    code = int(event.notification.Status.value)
                    if self._lost is not None:
                        raise classify(self._lost, f"{self.o.endpoint}: connection lost")
                    raise TransientError(f"{self.o.endpoint}: subscription ended: "
                                         f"{status_name(code)}", kind="disconnected")
        except StopAsyncIteration:
            raise TransientError(f"{self.o.endpoint}: subscription closed",
                                 kind="disconnected") from None
