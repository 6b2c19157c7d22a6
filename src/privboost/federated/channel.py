"""In-process channel between the aggregator and sites: for tests, and to time the protocol apart from Flower.

Requests and replies are passed by reference, as Flower's messages would carry them; a site can be made to drop
out before answering a given round (``drop_at``) or after sending its masked vector (``drop_after_mask``), to test
secure aggregation's dropout handling. Every reply is recorded when ``record`` is set, which is the aggregator's
entire view of the sites.
"""

from __future__ import annotations

from privboost.federated.messages import payload_bytes
from privboost.federated.site import Site


class LocalChannel:
    """Direct calls to `Site` objects, with optional scripted dropouts and a record of every reply."""

    def __init__(self, sites: dict[int, Site], drop_at: dict[int, int] | None = None,
                 drop_after_mask: dict[int, int] | None = None, record: bool = False) -> None:
        self.sites = sites
        self.drop_at = drop_at or {}
        self.drop_after_mask = drop_after_mask or {}
        self.gone: set[int] = set()
        self.view: list[tuple[int, dict]] | None = [] if record else None
        self.bytes_from_sites: dict[int, int] = dict.fromkeys(sites, 0)

    def site_ids(self) -> list[int]:
        """Ids of all sites (dropped ones included: the aggregator tracks who is alive)."""
        return sorted(self.sites)

    def exchange(self, requests: dict[int, dict]) -> dict[int, dict]:
        """Each live site answers its request; sites scheduled to drop at this round stop answering for good."""
        replies = {}
        for site_id, request in requests.items():
            round_id = request.get("round", -1)
            if request.get("stage") == "mask" and self.drop_at.get(site_id, 1 << 62) <= round_id:
                self.gone.add(site_id)
            if request.get("stage") == "unmask" and self.drop_after_mask.get(site_id, 1 << 62) <= round_id:
                self.gone.add(site_id)
            if site_id in self.gone:
                continue
            reply = self.sites[site_id].handle(request)
            self.bytes_from_sites[site_id] += payload_bytes(reply)
            if self.view is not None:
                self.view.append((site_id, reply))
            replies[site_id] = reply
        return replies
