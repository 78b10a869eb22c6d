"""Named hyperparameter sets (``--preset``): plain data, one dict of ``Config`` fields each.

A preset is applied first and the flags a user gives override it (``config.apply_preset``). Nothing registers a
preset as a side effect of importing a module.
"""

from __future__ import annotations

#: The paper's Atari hyperparameters (Table 5). alpha is annealed from 1 to 0: Adam step 2.5e-4 x alpha and clip
#: eps 0.1 x alpha. 8 actors x T=128 = 1024 samples; minibatch 32 x 8 = 256 -> 4 minibatches; 3 epochs; c1 = 1,
#: c2 = 0.01; shared Nature CNN. 10M agent steps = 40M frames (Table 6). Nothing else from ppo2 (no gradient or value
#: clipping, no advantage normalization). Evaluation samples actions (a deterministic Atari policy can stall, e.g.
#: never pressing FIRE).
PAPER_ATARI = dict(
    env="ALE/Breakout-v5", total_timesteps=10_000_000, num_envs=8, num_steps=128, num_epochs=3, num_minibatches=4,
    learning_rate=2.5e-4, anneal_lr=True, clip_eps=0.1, anneal_clip=True, vf_coef=1.0, ent_coef=0.01, gamma=0.99,
    gae_lambda=0.95, norm_adv=False, vf_clip=None, max_grad_norm=None, adam_eps=1e-8, shared_torso=True,
    normalize_obs=False, normalize_reward=False, eval_deterministic=False,
)

#: openai/baselines ppo2 Atari defaults: 4 epochs, 4 minibatches, constant clip 0.1 (also clipping the value
#: update), lr 2.5e-4 annealed, ent 0.01, gradient-norm clip 0.5, Adam eps 1e-5, advantages normalized per
#: minibatch. ppo2's loss has 0.5 * vf_coef * (V - R)^2 with vf_coef 0.5, which is c1 = 0.25 in eq. 9's form.
PPO2_ATARI = dict(
    env="ALE/Breakout-v5", total_timesteps=10_000_000, num_envs=8, num_steps=128, num_epochs=4, num_minibatches=4,
    learning_rate=2.5e-4, anneal_lr=True, clip_eps=0.1, anneal_clip=False, vf_coef=0.25, ent_coef=0.01, gamma=0.99,
    gae_lambda=0.95, norm_adv=True, vf_clip=0.1, max_grad_norm=0.5, adam_eps=1e-5, shared_torso=True,
    normalize_obs=False, normalize_reward=False, eval_deterministic=False,
)

#: CleanRL's ppo_atari_lstm.py (Huang et al. 2022, "The 37 implementation details of PPO", the LSTM variant): the
#: Nature CNN, then an LSTM of 128, heads on its output; no frame stacking (the cell remembers); 8 actors x 128
#: steps, 4 epochs x 4 minibatches of 2 whole actor sequences, lr 2.5e-4 annealed, clip 0.1 (also on the value),
#: ent 0.01, value loss 0.5 * 0.5 (c1 = 0.25 in eq. 9's form), gradient-norm clip 0.5, Adam eps 1e-5.
CLEANRL_ATARI_LSTM = dict(
    env="ALE/Breakout-v5", total_timesteps=10_000_000, num_envs=8, num_steps=128, num_epochs=4, num_minibatches=4,
    learning_rate=2.5e-4, anneal_lr=True, clip_eps=0.1, anneal_clip=False, vf_coef=0.25, ent_coef=0.01, gamma=0.99,
    gae_lambda=0.95, norm_adv=True, vf_clip=0.1, max_grad_norm=0.5, adam_eps=1e-5, policy="lstm", rnn_size=128,
    frame_stack=1, normalize_obs=False, normalize_reward=False, eval_deterministic=False,
)

PRESETS: dict[str, dict] = {
    # The default: CartPole-v1 solved (return 500) within 100k steps. RL-Zoo-like settings.
    "cartpole": dict(env="CartPole-v1"),
    # RL-Zoo's tuned recurrent PPO for CartPoleNoVel-v1 (hyperparams/ppo_lstm.yml; 500 at 100k steps in its
    # benchmark): the default settings with one minibatch, observation and reward normalization, and sb3-contrib's
    # layout: separate actor and critic LSTMs of 64 on the observation, then a 64-unit ReLU layer per head, torch's
    # default (not orthogonal) init, as sb3 runs it; on CartPole without velocities. (Session 11, 8 seeds: torch's
    # init reached last-100 475 within 100k steps in 5, flax's in 2.)
    "cartpole-lstm": dict(env="ppolab/StatelessCartPole-v0", policy="lstm", rnn_size=64, rnn_separate=True,
                          hidden_sizes=(), rnn_head_sizes=(64,), activation="relu", ortho_init=False,
                          default_init="torch", num_minibatches=1, normalize_obs=True, normalize_reward=True),
    # The same settings on gymnax's CartPole with the fully jitted driver (solved within 100k steps).
    "gymnax-cartpole": dict(env="gymnax:CartPole-v1"),
    # The paper's MuJoCo setting, Table 3, and nothing else: 1 actor, T=2048, Adam 3e-4 constant, 10 epochs,
    # minibatch 64, gamma 0.99, lambda 0.95, eps 0.2, separate policy/value MLPs 64-64 tanh, no entropy bonus,
    # no gradient clipping, no value clipping, no normalization, no learning-rate or clip annealing.
    "paper-mujoco": dict(
        env="Hopper-v5", total_timesteps=1_000_000, num_envs=1, num_steps=2048, num_epochs=10, num_minibatches=32,
        learning_rate=3e-4, anneal_lr=False, clip_eps=0.2, anneal_clip=False, gamma=0.99, gae_lambda=0.95,
        vf_coef=1.0, ent_coef=0.0, norm_adv=False, vf_clip=None, max_grad_norm=None, adam_eps=1e-8,
        shared_torso=False, normalize_obs=False, normalize_reward=False, kl_beta=1.0,
    ),
    # The paper's released code (openai/baselines ppo1, run_mujoco.py + pposgd_simple.py as released in 2017): Table
    # 3 plus what the table does not list: lr and eps x alpha (schedule='linear'; later ppo1 versions dropped the eps
    # annealing), advantages standardized once per batch, observations normalized by a running mean/std, Adam eps
    # 1e-5. ppo1 clips normalized observations to +-5 (ppolab +-10) and updates their statistics before the epochs.
    "ppo1-mujoco": dict(
        env="Hopper-v5", total_timesteps=1_000_000, num_envs=1, num_steps=2048, num_epochs=10, num_minibatches=32,
        learning_rate=3e-4, anneal_lr=True, clip_eps=0.2, anneal_clip=True, gamma=0.99, gae_lambda=0.95,
        vf_coef=1.0, ent_coef=0.0, norm_adv=True, norm_adv_batch=True, vf_clip=None, max_grad_norm=None,
        adam_eps=1e-5, shared_torso=False, normalize_obs=True, normalize_reward=False, kl_beta=1.0,
    ),
    # openai/baselines ppo2 MuJoCo defaults: adds observation/reward normalization, value clipping, gradient
    # clipping 0.5, Adam eps 1e-5, linear lr decay, per-minibatch advantage normalization.
    # ppo2's loss is 0.5 * vf_coef * (V - R)^2 with vf_coef 0.5, i.e. c1 = 0.25 in eq. 9's form.
    "ppo2-mujoco": dict(
        env="Hopper-v5", total_timesteps=1_000_000, num_envs=1, num_steps=2048, num_epochs=10, num_minibatches=32,
        learning_rate=3e-4, anneal_lr=True, clip_eps=0.2, anneal_clip=False, gamma=0.99, gae_lambda=0.95,
        vf_coef=0.25, ent_coef=0.0, norm_adv=True, vf_clip=0.2, max_grad_norm=0.5, adam_eps=1e-5,
        shared_torso=False, normalize_obs=True, normalize_reward=True,
    ),
    # Brax's own PPO settings for Ant (google/brax notebooks/training.ipynb, PPO cell; positional pipeline):
    # 4096 envs, 16 unrolls of 5 steps per env between updates (T = 80 here, GAE over the whole horizon), 4 epochs
    # x 32 minibatches of 10,240 samples, Adam 3e-4 constant, gamma 0.97, lambda 0.95, eps 0.3, entropy 1e-2,
    # observation normalization, 50M steps. Brax multiplies rewards by 10 and uses tanh-squashed Gaussians with
    # 32x4 policy / 256x5 value swish MLPs; ppolab scales rewards by the running return std and keeps its own
    # Gaussian policy with 256-256 tanh MLPs. Sized for one GPU: 327,680 env steps per iteration.
    "brax": dict(
        env="brax:ant", brax_backend="positional", total_timesteps=50_000_000, num_envs=4096, num_steps=80,
        num_epochs=4, num_minibatches=32, learning_rate=3e-4, anneal_lr=False, clip_eps=0.3, anneal_clip=False,
        gamma=0.97, gae_lambda=0.95, vf_coef=0.5, ent_coef=1e-2, norm_adv=True, vf_clip=None, max_grad_norm=None,
        hidden_sizes=(256, 256), normalize_obs=True, normalize_reward=True, checkpoint_every=10,
    ),
    "paper-atari": PAPER_ATARI,
    "ppo2-atari": PPO2_ATARI,
    "cleanrl-atari-lstm": CLEANRL_ATARI_LSTM,
}
