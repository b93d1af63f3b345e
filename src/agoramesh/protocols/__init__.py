"""Negotiation and collaboration: contract-net auctions, strategies, modes, workflows.

- :mod:`~agoramesh.protocols.auction`: the contract net, both sides, and its scoring.
- :mod:`~agoramesh.protocols.allocation`: dispatch, allocation strategies and votes.
- :mod:`~agoramesh.protocols.collaboration`: the collaboration modes and their requests.
- :mod:`~agoramesh.protocols.workflow`: workflows (YAML/Python DAGs) and their engine.
- :mod:`~agoramesh.protocols.jobs`: durable jobs, the submitter's API and the worker.
- :mod:`~agoramesh.protocols.references`: the reference syntax collaboration and
  workflows share.
"""

from agoramesh.protocols.allocation.dispatch import Dispatcher, Strategy
from agoramesh.protocols.auction.auctioneer import Auctioneer
from agoramesh.protocols.auction.policy import AuctionOutcome, AuctionPolicy, Progress
from agoramesh.protocols.auction.scoring import Bid, rank, weighted

__all__ = ("AuctionOutcome", "AuctionPolicy", "Auctioneer", "Bid", "Dispatcher", "Progress",
           "Strategy", "rank", "weighted")
