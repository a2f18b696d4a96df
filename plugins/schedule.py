"""Scheduled scenario events: at a given tick, move a client's CPUs (vCPUs) to other NUMA nodes.

For scenarios such as "the guest's vCPUs move to the other node after boot". Each event names a client
by its tenant (``guest0``, a process's name) and, optionally, which of its clients (0: its own CPUs or
vCPUs, 1 onward: its devices), and the nodes its CPUs run on from then on.
"""

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mmnsim import ConfigError, HostPolicy, hookimpl, require


@dataclass
class ScheduleConfig:
    events: list[dict[str, Any]] = field(default_factory=list)  # {at_tick, tenant, client?, vcpu_nodes}


class Schedule(HostPolicy):
    name = "schedule"
    Config = ScheduleConfig

    def __init__(self, sim, cfg: ScheduleConfig):
        super().__init__(sim, cfg)
        tenants = {t.name: t for t in sim.tenants}
        self.events = []
        for i, event in enumerate(cfg.events):
            key = f"policies.schedule.events[{i}]"
            unknown = set(event) - {"at_tick", "tenant", "client", "vcpu_nodes"}
            require(not unknown, f"{key}: unknown keys {sorted(unknown)}; accepted: at_tick, tenant, client, "
                                 "vcpu_nodes")  # fmt: skip
            tenant = tenants.get(event.get("tenant"))
            if tenant is None:
                raise ConfigError(f"{key}.tenant: {event.get('tenant')!r} is not one of {', '.join(tenants)}")
            index = int(event.get("client", 0))
            if not 0 <= index < len(tenant.clients):
                raise ConfigError(f"{key}.client: {index} is outside 0..{len(tenant.clients) - 1}")
            nodes = np.asarray(event.get("vcpu_nodes", []), dtype=np.int64)
            if nodes.size == 0 or nodes.min() < 0 or nodes.max() >= sim.host.nodes:
                raise ConfigError(
                    f"{key}.vcpu_nodes: {nodes.tolist()} must name nodes in 0..{sim.host.nodes - 1} "
                    f"(host.numa_nodes={sim.host.nodes})"
                )
            at = event.get("at_tick")
            if not isinstance(at, int) or at < 0:
                raise ConfigError(f"{key}.at_tick: expected a tick number >= 0, got {at!r}")
            self.events.append((at, tenant.clients[index], nodes))

    @hookimpl
    def host_tick(self, sim) -> None:
        for at, client, nodes in self.events:
            if at == sim.tick:
                client.vcpu_node = np.resize(nodes, client.vcpus).astype(np.int32)


@hookimpl
def register_components():
    return [Schedule]
