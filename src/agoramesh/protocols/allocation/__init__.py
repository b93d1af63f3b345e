"""Who gets a task: dispatch, allocation strategies and votes.

- :mod:`~agoramesh.protocols.allocation.dispatch`: the ``Dispatcher``, submit by
  auction, direct or to one agent.
- :mod:`~agoramesh.protocols.allocation.strategies`: allocation of task sets
  (auction-based, priority-based, consensus) and conflict resolution.
- :mod:`~agoramesh.protocols.allocation.voting`: ballots and tallies.
"""

__all__ = ()
