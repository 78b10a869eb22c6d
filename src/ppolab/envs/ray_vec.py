"""Gymnasium environments stepped by Ray actors: the distributed mode, for envs that outgrow one machine.

The design is SEED RL's (Espeholt et al. 2020, arXiv 1910.06591) on Ray's actors: W workers each own a shard of the
K x B sub-environments as an ordinary local vector env; the learner process keeps the policy, computes every action
in one batched forward pass, and sends each worker its shard's actions. A worker steps its shard and returns the
observations, rewards, terminated/truncated flags and the SAME_STEP autoreset information (the final observation of
every episode that ended, and Gymnasium's episode statistics where a wrapper records them). Action masks travel
inside the observations (``gymnasium_masks``: each worker's sub-envs append theirs), so they need nothing here.

``RayVectorEnv`` has the interface of a Gymnasium vector env in SAME_STEP autoreset mode, so ``GymnasiumVecEnv``
wraps it unchanged. Sub-env i is seeded with the same seed as without Ray, and the actions are computed where they
always are: a run with any number of workers is the same run, bit for bit, as one without Ray (tested).

Ray (``pip install 'ppolab[ray]'``) is imported only when ``--ray-workers`` is set. ``--ray-address`` connects to a
running cluster (``ray start --head`` on one machine, ``ray start --address ...`` on the others); without it a local
Ray instance is started for the run and shut down after it.
"""

from __future__ import annotations

import warnings

import numpy as np
from flax import serialization

from ppolab.envs.errors import EnvError, EnvWorkerError


def import_ray():
    """``ray``, or an ``EnvError`` that says how to install it."""
    try:
        import ray
    except ImportError:
        raise EnvError("--ray-workers needs Ray: pip install 'ppolab[ray]' (or pip install ray), or drop "
                       "--ray-workers to step the environments in this process") from None
    return ray


def init_ray(address: str = ""):
    """(ray, started): join the Ray cluster at ``address`` ('auto', 'HOST:6379') or start a local one (''), unless
    this process is connected already. ``started`` says whether the caller should shut it down."""
    ray = import_ray()
    if ray.is_initialized():
        return ray, False
    try:
        with warnings.catch_warnings():  # Ray starts its processes with fork + exec: nothing JAX can break
            warnings.filterwarnings("ignore", message="os.fork", category=RuntimeWarning)
            ray.init(address=address or None, include_dashboard=False, log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise EnvError(f"cannot start or reach Ray (address {address!r}): {e}") from None
    return ray, True


class ShardWorker:
    """One Ray actor's shard: a local vector env of ``num_envs`` sub-envs (``make_gymnasium_vec``)."""

    def __init__(self, env_id: str, num_envs: int, mode: str, env_kwargs: dict | None, wrappers: list | None,
                 sys_path: list[str] | None = None, action_mask: str = "auto"):
        import sys

        from ppolab.envs import atari
        from ppolab.envs.gymnasium_vec import make_gymnasium_vec

        for p in sys_path or []:  # where the trainer found a user's env module (``--env my_module:MyEnv-v0``)
            if p not in sys.path:
                sys.path.append(p)
        if atari.is_atari(env_id):  # this process has not registered ALE's ids yet
            atari.register_ale()
        self.env = make_gymnasium_vec(env_id, num_envs, mode, env_kwargs, wrappers, action_mask)

    def spaces(self):
        return self.env.single_observation_space, self.env.single_action_space

    def reset(self, seeds: list[int]):
        obs, _ = self.env.reset(seed=seeds)
        return np.asarray(obs)

    def step(self, actions: np.ndarray) -> bytes:
        """-> msgpack bytes of {obs, rew, term, trunc}, plus where an episode ended {final_mask, final_obs (the rows
        of the ended sub-envs)} and, where a wrapper records them, {episode_mask, episode (Gymnasium's statistics)}."""
        obs, rew, term, trunc, info = self.env.step(actions)
        out = {"obs": np.asarray(obs), "rew": np.asarray(rew, np.float64), "term": np.asarray(term, bool),
               "trunc": np.asarray(trunc, bool)}
        if "final_obs" in info:
            mask = np.asarray(info["_final_obs"], bool)
            out["final_mask"] = mask
            out["final_obs"] = np.stack([np.asarray(info["final_obs"][i]) for i in np.flatnonzero(mask)])
            fin = info.get("final_info", {})
            if "episode" in fin:
                out["episode_mask"] = np.asarray(fin["_episode"], bool)
                out["episode"] = {k: np.asarray(v) for k, v in fin["episode"].items()}
        # Sent as msgpack bytes (the checkpoints' format), decoded by the trainer into arrays over Python-owned
        # memory. Arrays that Ray hands over zero-copy are views into a compiled graph's shared-memory channel, and
        # one freed after the graph is torn down (e.g. when a worker died) crashed the trainer at exit (seen:
        # SIGSEGV in PlasmaObjectHeader::CheckHasError).
        return serialization.msgpack_serialize(out)

    def close(self):
        self.env.close()


class RayVectorEnv:
    """``num_envs`` sub-envs of ``env_id`` in ``num_workers`` Ray actors (contiguous shards, sizes differing by at
    most one), behind the Gymnasium vector env interface (SAME_STEP autoreset)."""

    def __init__(self, env_id: str, num_envs: int, num_workers: int, mode: str = "sync",
                 env_kwargs: dict | None = None, wrappers: list | None = None, address: str = "",
                 worker_cpus: float = 1.0, compiled: bool = True, sys_path: list[str] | None = None,
                 action_mask: str = "auto"):
        if num_workers > num_envs:
            raise EnvError(f"--ray-workers {num_workers} is more than the {num_envs} environments to step (num_envs "
                           f"x agents); use at most {num_envs} workers")
        ray, self._owns_ray = init_ray(address)
        self._ray = ray
        self.workers = []
        self._graph = None  # the compiled step graph, built at the first step after a reset
        self._dead = False  # a worker died
        self.compiled = compiled
        try:
            total = ray.cluster_resources().get("CPU", 0.0)
            if worker_cpus * num_workers > total:
                raise EnvError(f"--ray-workers {num_workers} x --ray-worker-cpus {worker_cpus:g} needs "
                               f"{worker_cpus * num_workers:g} CPUs but the Ray cluster has {total:g}; lower either "
                               "(--ray-worker-cpus 0 lets workers share cores, e.g. for envs that wait on I/O)")
            bounds = np.linspace(0, num_envs, num_workers + 1).round().astype(int)
            self.slices = [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
            actor = ray.remote(num_cpus=worker_cpus)(ShardWorker)
            self.workers = [actor.remote(env_id, s.stop - s.start, mode, env_kwargs, wrappers, sys_path, action_mask)
                            for s in self.slices]
            spaces = self._get([w.spaces.remote() for w in self.workers])
        except BaseException:
            self.close()
            raise
        self.single_observation_space, self.single_action_space = spaces[0]
        self.num_envs = num_envs

    def _get(self, refs):
        ex = self._ray.exceptions
        try:
            return self._ray.get(refs)
        except (ex.RayActorError, ex.RayChannelError) as e:
            self._dead = True
            first = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
        except ex.RayTaskError as e:
            raise e.as_instanceof_cause() from None
        # Raised out here, with the refs dropped: raised inside the handler, it would keep Ray's error, its
        # traceback and through it the compiled graph's result refs alive past the graph's teardown and Ray's
        # shutdown (nothing of the graph should be finalized after those; see ``step`` on results' memory).
        del refs
        raise EnvWorkerError(f"a Ray environment worker died ({first})")

    def _step_graph(self):
        """Ray's compiled graph of one step of every worker: each call then travels through shared-memory channels
        instead of Ray's task scheduler (a probe on the 2-core VM: 1.5 ms -> 0.22 ms a step with one worker).
        Where it cannot be built (e.g. Ray Client), steps stay ordinary actor calls."""
        if self._graph is None and self.compiled:
            from ray.dag import InputNode, MultiOutputNode

            try:
                with InputNode() as inp:
                    dag = MultiOutputNode([w.step.bind(inp[i]) for i, w in enumerate(self.workers)])
                self._graph = dag.experimental_compile()
            except Exception:  # noqa: BLE001 - the ordinary calls below always work
                self.compiled = False
        return self._graph

    def _teardown_graph(self):
        if self._graph is not None:
            graph, self._graph = self._graph, None
            if self._dead:  # kill first: the graph's teardown then finds every actor gone instead of waiting on one
                for w in self.workers:
                    self._ray.kill(w)
            try:
                graph.teardown(kill_actors=self._dead)
            except Exception:  # noqa: BLE001 - a dead worker's channels are gone already
                pass
            monitor = getattr(graph, "_monitor", None)  # Ray's thread that watches the graph's actors: let it end
            if monitor is not None:  # before the process does (a daemon thread inside Ray at exit can crash it)
                monitor.join(timeout=30)

    def reset(self, *, seed=None, options=None):
        self._teardown_graph()  # a compiled graph owns its actors' execution loop: plain calls wait for it
        seeds = list(seed) if seed is not None else [None] * self.num_envs
        parts = self._get([w.reset.remote(seeds[s]) for w, s in zip(self.workers, self.slices, strict=True)])
        return np.concatenate(parts), {}

    def step(self, actions):
        actions = np.asarray(actions)
        shards = [actions[s] for s in self.slices]
        graph = self._step_graph()
        if graph is not None:
            blobs = self._get(graph.execute(*shards))
        else:
            blobs = self._get([w.step.remote(a) for w, a in zip(self.workers, shards, strict=True)])
        parts = [serialization.msgpack_restore(b) for b in blobs]
        obs, rew, term, trunc = (np.concatenate([p[k] for p in parts]) for k in ("obs", "rew", "term", "trunc"))
        info = {}
        n = self.num_envs
        for s, part in zip(self.slices, parts, strict=True):
            if "final_mask" not in part:
                continue
            if "final_obs" not in info:
                info["final_obs"], info["_final_obs"] = np.full(n, None, object), np.zeros(n, bool)
            idx = s.start + np.flatnonzero(part["final_mask"])
            info["_final_obs"][idx] = True
            for i, row in zip(idx, part["final_obs"], strict=True):
                info["final_obs"][i] = row
            if "episode" in part:
                ep = part["episode"]
                fin = info.setdefault("final_info", {"episode": {k: np.zeros(n, v.dtype) for k, v in ep.items()},
                                                     "_episode": np.zeros(n, bool)})
                for k, v in ep.items():
                    fin["episode"][k][s] = v
                fin["_episode"][s] = part["episode_mask"]
        return obs, rew, term, trunc, info

    def close(self):
        ray = self._ray
        self._teardown_graph()
        if self.workers:
            try:
                if not self._dead:
                    ray.get([w.close.remote() for w in self.workers], timeout=30)
            except Exception:  # noqa: BLE001 - a dead worker has nothing left to close
                pass
            for w in self.workers:
                ray.kill(w)
            self.workers = []
        if self._owns_ray:
            ray.shutdown()
            self._owns_ray = False
