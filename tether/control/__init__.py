"""RLHF for control agents (Christiano et al. 2017): a gymnasium agent (SB3 PPO) trained on a reward
learned from comparisons of its own trajectory clips.

- :mod:`tether.control.env`: vectorised envs, the buffer of experience, the reward-replacing wrapper;
- :mod:`tether.control.clips`: cutting clips, choosing pairs, the synthetic labeler, the label budget;
- :mod:`tether.control.reward`: the preference loss (eq. 1 + label noise) and the MLP ensemble;
- :mod:`tether.control.render`: a clip as a GIF / MP4 (for the web app);
- :mod:`tether.control.db`: comparisons (and web labeling tasks) in the workspace database;
- :mod:`tether.control.weblabels`: waiting for people's answers in ``tether serve`` and reading them back;
- :mod:`tether.control.recipe`: ``run(ControlConfig) -> Result``, the whole loop.

Needs the ``control`` extra (gymnasium, stable-baselines3, imageio); nothing here is imported by
``import tether``, and gymnasium / SB3 load only when a function needs them.
"""
