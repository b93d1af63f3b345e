"""The decentralized mode: M-7's synchronous step API over the mesh.

``AutonomousAgent`` (autonomous_agent.py) and ``CommunicationManager``
(communication.py) are the classes M-7 specifies; ``BaseAgent`` (base.py)
and the simulator protocol (:mod:`agoramesh.sim.interface`) are what another
framework implements to use them.
"""

from agoramesh.modes.decentralized.autonomous_agent import AutonomousAgent
from agoramesh.modes.decentralized.base import BaseAgent
from agoramesh.modes.decentralized.communication import CommunicationManager
from agoramesh.modes.decentralized.config import DecentralizedConfig, load_config
from agoramesh.modes.decentralized.episode import EpisodeResult, EpisodeRunner

__all__ = ("AutonomousAgent", "BaseAgent", "CommunicationManager", "DecentralizedConfig",
           "EpisodeResult", "EpisodeRunner", "load_config")
