"""Who gets a task: dispatch, allocation strategies and votes.

- :mod:`~agoramesh.protocols.allocation.dispatch`: the ``Dispatcher``, submit by
  auction, direct or to one agent.
- :mod:`~agoramesh.protocols.allocation.strategies`: allocation of task sets
  (auction-based, priority-based, consensus);
  :mod:`~agoramesh.protocols.allocation.negotiation`: one agent's answer to an
  allocation, and conflicting claims settled.
- :mod:`~agoramesh.protocols.allocation.voting`: ballots and tallies.
"""

__all__ = ()
