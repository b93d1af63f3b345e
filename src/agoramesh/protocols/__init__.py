"""Negotiation and collaboration: contract-net auctions, strategies, modes, workflows."""

from agoramesh.protocols.contract_net import Auctioneer, AuctionOutcome, AuctionPolicy, Progress
from agoramesh.protocols.dispatch import Dispatcher, Strategy
from agoramesh.protocols.scoring import Bid, rank, weighted

__all__ = ("AuctionOutcome", "AuctionPolicy", "Auctioneer", "Bid", "Dispatcher", "Progress",
           "Strategy", "rank", "weighted")
