"""tether: reinforcement learning from human feedback, end to end.

Collect feedback (people, simulated labelers, AI judges), train reward models, and optimise
policies (SFT, PPO, DPO, RLOO/GRPO) over one workspace database.
"""

__version__ = "0.1.0"
