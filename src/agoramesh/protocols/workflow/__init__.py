"""Workflows: DAGs of steps, validated, driven by the submitter.

- :mod:`~agoramesh.protocols.workflow.workflow`: the format and its validation.
- :mod:`~agoramesh.protocols.workflow.step`: one step.
- :mod:`~agoramesh.protocols.workflow.expr`: references and conditions in steps.
- :mod:`~agoramesh.protocols.workflow.engine`: the run.
"""

__all__ = ()
