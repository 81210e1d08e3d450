"""Regions, cells, racks and machines as key prefixes, and where each kind of file is placed.

``<region>/cell-<c>/rack-<rr>/m-<m>/...``: one cell per region here (f4 runs several; a cell is 14 racks).
Placement is a pure function of ids, so any worker computes the same location without asking anyone.
"""

from __future__ import annotations

from dataclasses import dataclass

from darkroom.settings import BlobSettings


@dataclass(frozen=True, order=True)
class Machine:
    region: str
    cell: int
    rack: int
    machine: int

    @property
    def prefix(self) -> str:
        return f"{self.region}/cell-{self.cell}/rack-{self.rack:02d}/m-{self.machine}"

    @property
    def rack_id(self) -> str:
        return f"{self.region}/cell-{self.cell}/rack-{self.rack:02d}"


class Topology:
    def __init__(self, blob: BlobSettings) -> None:
        self.regions = list(blob.regions)
        self.racks = blob.racks_per_cell
        self.machines = blob.machines_per_rack
        self.replicas = blob.hot_replicas
        self.k = blob.ec_data_blocks
        self.m = blob.ec_parity_blocks
        if self.k + self.m > self.racks:
            raise ValueError(f"blob.racks_per_cell={self.racks}: a stripe needs {self.k + self.m} racks")
        if self.replicas > self.racks:
            raise ValueError(f"blob.hot_replicas={self.replicas} needs as many racks, a cell has {self.racks}")

    def home_region(self, volume_id: int) -> str:
        return self.regions[volume_id % len(self.regions)]

    def hot_replicas(self, volume_id: int) -> list[Machine]:
        """``hot_replicas`` machines on distinct racks of the volume's home region."""
        region = self.home_region(volume_id)
        first = (volume_id * 7) % self.racks
        step = max(1, self.racks // self.replicas)
        return [
            Machine(region, 0, (first + i * step) % self.racks, (volume_id + i) % self.machines)
            for i in range(self.replicas)
        ]

    def warm_blocks(self, volume_id: int) -> list[Machine]:
        """Block i (0..k+m-1) of every stripe of a warm volume: rack i of the home region's cell."""
        region = self.home_region(volume_id)
        return [Machine(region, 0, i, (volume_id + i) % self.machines) for i in range(self.k + self.m)]

    def xor_region(self, region_a: str, region_b: str) -> str:
        """The region that holds the XOR of a volume pair from two other regions (f4's geo-replication)."""
        rest = [r for r in self.regions if r not in (region_a, region_b)]
        if region_a == region_b or not rest:
            raise ValueError(f"an XOR pair needs two distinct regions and a third: {region_a}, {region_b}")
        return rest[0]

    def cold_regions(self, pack_id: int, copies: int) -> list[Machine]:
        n = len(self.regions)
        return [
            Machine(self.regions[(pack_id + i) % n], 0, (pack_id + i) % self.racks, pack_id % self.machines)
            for i in range(min(copies, n))
        ]
