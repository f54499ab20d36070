"""What every agent folder shares, whatever learnt it (PPO in agents.py, CMA-ES in controller.py):
the format tag, the files that name its controls and its record, the error, and the check that an
agent plays only the controls it was trained with."""

from __future__ import annotations

from neuralworld.actions import ActionSpec

FORMAT = "neuralworld-agent"
SPEC_FILE = "action_spec.json"
META_FILE = "agent.json"


class AgentError(ValueError):
    """An agent that cannot be trained, loaded or played where it was asked; the message says why."""


def check_spec(agent_spec: ActionSpec, env_spec: ActionSpec, agent: str, env: str) -> None:
    if agent_spec != env_spec:
        raise AgentError(
            f"agent {agent} acts in {agent_spec.describe()}, but {env} takes {env_spec.describe()} "
            f"({agent_spec.diff(env_spec)}): an agent plays only the controls it was trained with"
        )
