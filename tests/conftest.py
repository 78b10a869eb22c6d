"""Test-session setup.

- The persistent compilation cache goes to a fresh directory of this session, so tests never depend on (or
  pollute) a user's ~/.cache/ppolab/jax. Subprocesses inherit the variable.
- report.html is not written at the end of each of the suite's many small runs (1-3 s each); tests/test_report.py
  checks it at the end of a run and on its own.
- float32 matrix products at full precision. The tests check arithmetic (numpy vs JAX networks, a vmapped agent vs
  the same agent alone) to ~1e-5; on NVIDIA GPUs JAX's default float32 matmuls run in TF32 (10-bit mantissa), which
  moves such results by ~1e-3 (seen on an H200: 9 tests failed at the default precision and passed at "highest").
  On CPU this changes nothing.
"""

import os
import tempfile

# two pytest-xdist workers (pyproject addopts) on one GPU: each takes memory as it needs it, not 75 % at start
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402

os.environ["PPOLAB_CACHE_DIR"] = tempfile.mkdtemp(prefix="ppolab-test-jax-cache-")
os.environ["PPOLAB_REPORT"] = "0"  # report.html at the end of every run: tested in tests/test_report.py
jax.config.update("jax_default_matmul_precision", "highest")


# ---- the default run and the slow tier ------------------------------------------------------------------------------
# `python -m pytest -q` (README, .ci/run) runs the default tier, meant to stay under ~10 minutes on the slowest
# machines CI uses, ~4 minutes on an AVX-512 one (measured in session 7: 7 min 6 s there with two xdist workers, so
# still over; session 10, on a 2-core VM without AVX-512: 10 min 42 s to 12 min 19 s before the cuts marked
# "session 10" below; BENCHMARKS.md): every numerical reference, the refactor's regression runs, one of
# each kind of parity (jitted vs Python loop, Ray vs in-process, resume vs uninterrupted, vmapped vs alone) and the
# fast learning tests. `python -m pytest -q -m slow` runs the rest: the longer parity, learning, fault and grid tests
# below (each over ~7 s on a loaded 2-core VM) and those marked @pytest.mark.slow in their files.
SLOW = {
    "test_jit_driver.py::test_brax_physics_two_iterations",
    "test_jit_driver.py::test_brax_preset_is_brax_notebook_ant_and_the_cpu_note",
    "test_jit_driver.py::test_brax_two_iterations",
    "test_jit_driver.py::test_gymnax_cartpole_learns",
    "test_compare.py::test_the_grid_in_a_process_pool_and_as_ray_tasks_scores_exactly_like_in_process",
    "test_compare.py::test_ctrl_c_stops_the_ray_tasks_with_checkpoints_and_the_grid_resumes",
    "test_compare.py::test_tiny_grid_writes_every_output_and_skips_finished_runs",
    "test_atari.py::test_tiny_cnn_training_run",
    "test_population.py::test_two_threads_give_the_same_run_as_one",
    "test_ray.py::test_ctrl_c_reaches_the_whole_process_group_and_the_run_resumes",
    "test_ray.py::test_a_worker_killed_mid_run_leaves_a_checkpoint_and_a_resume_command",
    "test_ray.py::test_user_env_module_in_ray_workers",
    "test_ray.py::test_worker_cpus_zero_lets_more_workers_than_cpus_share_the_cores",
    "test_faults_run.py::test_second_process_on_a_run_is_refused_with_the_holders_pid",
    "test_faults_run.py::test_resuming_a_finished_run_changes_nothing",
    "test_faults_run.py::test_hung_env_step_hits_env_timeout",
    "test_faults_run.py::test_second_sigterm_stops_a_hung_step",
    "test_faults_run.py::test_full_disk_stops_the_run_within_seconds",
    "test_faults_run.py::test_env_fault_is_one_line_naming_env_subenv_and_step_with_checkpoint[faulty_envs:BadShapeAt",
    "test_faults_run.py::test_env_fault_is_one_line_naming_env_subenv_and_step_with_checkpoint[faulty_envs:RejectAct",
    "test_gymnasium_vec.py::test_vector_mode_cartpole_default_reaches_475_within_100k_steps",
    "test_gymnasium_vec.py::test_dict_observations_and_multidiscrete_actions_learn",
    "test_options.py::test_user_env_module_trains_evaluates_and_takes_env_kwargs",
    "test_options.py::test_user_env_module_in_compare",
    "test_figures.py::test_figure2_on_a_tiny_run_has_the_papers_structure",
    "test_masked_distributions.py::test_multicategorical_masks_per_sub_action",
    "test_signals.py::test_second_sigint_exits_at_once_and_corrupts_nothing",
    "test_signals.py::test_sigint_then_resume_then_sigterm",
    "test_resume.py::test_gymnasium_sigkill_between_checkpoints",
    "test_resume.py::test_repeated_sigkills_at_random_times_then_resume_is_bitwise",
    "test_nonfinite.py::test_nonfinite_parameters_stop_and_are_never_checkpointed",
    "test_learning.py::test_truncation_bootstrap_learns_geometric_value",
    "test_jumanji_env.py::test_rollout_matches_jumanji_with_same_step_autoreset",
    "test_masking_jax.py::test_host_and_jitted_drivers_agree_on_a_masked_jumanji_env",
    "test_masking_jax.py::test_masked_jumanji_run_resumes_bitwise",
    "test_masking.py::test_bandit_is_learned_without_illegal_actions_and_off_takes_the_bait",
    "test_config_props.py::test_to_dict_from_dict_round_trip_through_json",
    "test_tiny_grid.py::",
    # variants of a default-tier test: the compiled-graph variant steps through plain actor calls after its second
    # reset; the in-process resume tests stay (a kill inside a write: also test_repeated_sigkills_at_random_times);
    # masked acting of both backends: test_policy_api.py's test_action_masks_leave_only_legal_actions
    "test_ray.py::test_ray_vector_env_steps_like_the_local_vector_env[actor-calls]",
    "test_resume.py::test_sigkill_during_checkpoint_write_then_resume_is_bitwise",
    "test_figures.py::test_make_figures_writes_the_pngs_and_the_numbers",
    "test_masking.py::test_numpy_and_jax_acting_agree_on_masked_actions",
    # recurrent: the default tier keeps one numpy/flax/step variant per cell, the LSTM theory test, both reset
    # placements, the cells' gradients, vmapped-vs-alone + resume and the LSTM memory task
    "test_recurrent.py::test_host_and_jitted_drivers_agree_with_a_recurrent_policy",
    "test_recurrent.py::test_ratio_is_one_and_cpi_gradient_equals_pg_gradient_at_theta_old[gru-action1]",
    "test_recurrent.py::test_recurrent_train_learn_compiles_once_per_shape",
    "test_recurrent.py::test_sequence_scan_step_by_step_and_numpy_agree[torso-True-",
    "test_recurrent.py::test_sequence_scan_step_by_step_and_numpy_agree[heads-False-",
    "test_recurrent.py::test_sequence_scan_step_by_step_and_numpy_agree[torso-False-gru",
    "test_recurrent.py::test_sequence_scan_step_by_step_and_numpy_agree[heads-True-lstm",
    # pairing: the LSTM through the kernels and the GRU through the scans stay (the GRU kernel's vmapped members:
    # test_cell_kernels.py's test_kernels_under_vmap_equal_each_member_alone[gru])
    "test_recurrent.py::test_paired_actor_and_critic_cells_equal_each_cell_run_alone[kernels-gru]",
    "test_recurrent.py::test_paired_actor_and_critic_cells_equal_each_cell_run_alone[scans-lstm]",
    # session 10 (the suite at 10.7-12.3 min on a 2-core VM without AVX-512): options of the learner that compile
    # a program of their own (~10 s each) and have a dedicated default-tier test of what they do, or a sibling that
    # exercises the same stage (objective=pg; max_grad_norm=0.01; activation; norm_adv); Ray's wrappers and
    # episode statistics and the compiled-graph dead worker (the actor-calls one stays); MuJoCo frames (CartPole's
    # video stays)
    "test_core_update.py::test_each_option_changes_the_update[objective=cpi]",
    "test_core_update.py::test_each_option_changes_the_update[objective=kl-fixed]",  # kl-fixed,kl_beta=0: cached
    "test_core_update.py::test_each_option_changes_the_update[norm_adv_batch=True]",
    "test_core_update.py::test_each_option_changes_the_update[target_kl=1e-06]",
    "test_core_update.py::test_each_option_changes_the_update[normalize_reward=True]",
    "test_core_update.py::test_each_option_changes_the_update[adam_eps=0.1]",
    "test_core_update.py::test_each_option_changes_the_update[max_grad_norm=None]",
    "test_core_update.py::test_each_option_changes_the_update[ortho_init=False]",
    "test_ray.py::test_episode_statistics_and_wrappers_travel_to_the_workers",
    "test_ray.py::test_a_dead_worker_is_reported[compiled-graph]",
    "test_video.py::test_mujoco_frames",
}


def pytest_collection_modifyitems(config, items):
    import pytest

    for item in items:
        node = item.nodeid.removeprefix("tests/")
        if any(node.startswith(s) for s in SLOW):
            item.add_marker(pytest.mark.slow)
