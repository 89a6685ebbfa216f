"""Demonstrations for vision-language-action policies, and their LeRobot-layout files.

:class:`Demonstrations` holds N samples (action chunk, state, k camera images, instruction) and
gives ``pf.fit`` what it already reads: ``.x`` (the chunks ``[N, T, A]``) and ``.context`` (the
packed ``[state | pixels | instruction ids]`` of :mod:`pushforward.policy.vla`); it is also a
map-style Dataset of ``(x, context)`` items.

Files follow the LeRobot dataset layout (v2.1): ``meta/info.json`` (features, fps, paths),
``meta/tasks.jsonl`` (instructions), ``meta/episodes.jsonl``, one parquet file per episode under
``data/chunk-000/`` (read and written with pyarrow), images as PNG bytes in the parquet rows
(LeRobot's ``image`` feature) or, on reading, as mp4 videos (``video`` features, decoded with
PyAV). Needs the ``robot`` extra: ``pip install 'pushforward[robot]'``.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pushforward._utils import to_tensor
from pushforward._validate import check_finite, check_positive_int
from pushforward.policy.text import ByteTokenizer

_DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
_VIDEO_PATH = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
_CHUNK = 1000  # episodes per chunk folder, as LeRobot


def _need(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"LeRobot-layout files need {module}: pip install 'pushforward[robot]'") from None


class Demonstrations(torch.utils.data.Dataset):
    """N demonstration samples for :class:`~pushforward.policy.VLAPolicy`.

    Args:
        actions: ``[N, T, A]`` action chunks (raw units).
        state: ``[N, S]`` robot state at the chunk's first step.
        images: ``[N, C, H, W]`` uint8, or a list of k such (one per camera).
        instructions: N strings (``""`` is a valid, empty instruction).
        max_text: instruction length in bytes of the packed context (the policy's ``max_text``).
        episode_index: ``[N]`` ints grouping samples into episodes when saved (default: one episode).

    ``pf.fit(policy, demos)`` trains on ``demos.x`` with ``context=demos.context``.
    """

    def __init__(self, actions: Any, state: Any, images: Any, instructions: Sequence[str], *, max_text: int = 48,
                 episode_index: Any = None):
        self.actions = to_tensor(actions, "actions", torch.float32)
        if self.actions is None or self.actions.dim() != 3:
            raise ValueError(f"actions must be [N, T, A], got {None if actions is None else list(self.actions.shape)}")
        n = self.actions.shape[0]
        check_finite(self.actions, "actions")
        self.state = to_tensor(state, "state", torch.float32)
        if self.state is None or self.state.dim() != 2 or self.state.shape[0] != n:
            raise ValueError(f"state must be [N={n}, S], got {None if state is None else list(self.state.shape)}")
        check_finite(self.state, "state")
        views = list(images) if isinstance(images, (list, tuple)) else [images]
        self.images = []
        for i, v in enumerate(views):
            v = torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v
            if not isinstance(v, Tensor) or v.dtype != torch.uint8:
                raise TypeError(f"images (camera {i}) must be a uint8 tensor [N, C, H, W], got "
                                f"{v.dtype if isinstance(v, Tensor) else type(v).__name__}")
            if v.dim() != 4 or v.shape[0] != n or tuple(v.shape[1:]) != tuple(views[0].shape[1:]):
                raise ValueError(f"images (camera {i}) must be [N={n}, C, H, W] like camera 0, got {list(v.shape)}")
            self.images.append(v)
        if isinstance(instructions, str) or len(instructions) != n or not all(isinstance(s, str) for s in instructions):
            raise ValueError(f"instructions must be a list of N={n} strings")
        self.instructions = list(instructions)
        self.tokenizer = ByteTokenizer(check_positive_int(max_text, "max_text"))
        ep = torch.zeros(n, dtype=torch.long) if episode_index is None else torch.as_tensor(episode_index).long()
        if ep.shape != (n,):
            raise ValueError(f"episode_index must be [N={n}], got {list(ep.shape)}")
        self.episode_index = ep
        self._context: Tensor | None = None

    # ----------------------------------------------------------------- what fit reads
    @property
    def x(self) -> Tensor:
        """The action chunks ``[N, T, A]``."""
        return self.actions

    @property
    def context(self) -> Tensor:
        """Packed ``[N, S + k C H W + max_text]`` float32 (built once)."""
        if self._context is None:
            ids = self.tokenizer.encode(self.instructions).float()
            self._context = torch.cat([self.state, *[v.flatten(1).float() for v in self.images], ids], 1)
        return self._context

    def __len__(self) -> int:
        return self.actions.shape[0]

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.actions[i], self.context[i]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of each camera."""
        return tuple(self.images[0].shape[1:])

    def __repr__(self) -> str:
        return (f"Demonstrations(N={len(self)}, horizon={self.actions.shape[1]}, action_dim={self.actions.shape[2]}, "
                f"state_dim={self.state.shape[1]}, cameras={len(self.images)}, image_shape={self.image_shape})")

    # ----------------------------------------------------------------- LeRobot layout
    def save(self, root: str | Path, fps: int = 10) -> None:
        """Write a LeRobot-layout dataset (v2.1) to the folder ``root``.

        Each sample is one frame; its ``action`` feature is the whole chunk (shape ``[T, A]``),
        ``observation.state`` the state, ``observation.images.cam{i}`` a PNG per camera, and its
        instruction a task of ``meta/tasks.jsonl``.
        """
        pa, pq = _need("pyarrow"), _need("pyarrow.parquet")
        image = _need("PIL.Image")
        root = Path(root)
        n, t, a = self.actions.shape
        tasks = sorted(set(self.instructions))
        task_of = {s: i for i, s in enumerate(tasks)}
        c, h, w = self.image_shape
        keys = [f"observation.images.cam{i}" for i in range(len(self.images))]
        features = {
            "action": {"dtype": "float32", "shape": [t, a], "names": None},
            "observation.state": {"dtype": "float32", "shape": [self.state.shape[1]], "names": None},
            **{k: {"dtype": "image", "shape": [h, w, c], "names": ["height", "width", "channel"]} for k in keys},
            **{k: {"dtype": dt, "shape": [1], "names": None} for k, dt in (
                ("timestamp", "float32"), ("frame_index", "int64"), ("episode_index", "int64"),
                ("index", "int64"), ("task_index", "int64"))},
        }
        episodes = []
        for e in torch.unique(self.episode_index).tolist():
            rows = torch.nonzero(self.episode_index == e).flatten()
            cols = {
                "action": pa.FixedSizeListArray.from_arrays(pa.array(self.actions[rows].flatten().numpy()), t * a),
                "observation.state": pa.FixedSizeListArray.from_arrays(
                    pa.array(self.state[rows].flatten().numpy()), self.state.shape[1]),
            }
            for k, v in zip(keys, self.images):
                pngs = []
                for r in rows.tolist():
                    buf = io.BytesIO()
                    arr = v[r].permute(1, 2, 0).numpy()
                    image.fromarray(arr[..., 0] if c == 1 else arr).save(buf, format="PNG")
                    pngs.append({"bytes": buf.getvalue(), "path": None})
                cols[k] = pa.array(pngs, type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
            m = len(rows)
            cols["timestamp"] = pa.array(np.arange(m, dtype=np.float32) / fps)
            cols["frame_index"] = pa.array(np.arange(m, dtype=np.int64))
            cols["episode_index"] = pa.array(np.full(m, e, dtype=np.int64))
            cols["index"] = pa.array(rows.numpy().astype(np.int64))
            cols["task_index"] = pa.array(np.array([task_of[self.instructions[r]] for r in rows.tolist()], np.int64))
            path = root / _DATA_PATH.format(episode_chunk=e // _CHUNK, episode_index=e)
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.table(cols), path)
            episodes.append({"episode_index": e, "tasks": sorted({self.instructions[r] for r in rows.tolist()}),
                             "length": m})
        meta = root / "meta"
        meta.mkdir(parents=True, exist_ok=True)
        info = {"codebase_version": "v2.1", "robot_type": None, "total_episodes": len(episodes), "total_frames": n,
                "total_tasks": len(tasks), "total_videos": 0, "total_chunks": 1 + max(e["episode_index"] for e in episodes) // _CHUNK,
                "chunks_size": _CHUNK, "fps": fps, "splits": {"train": f"0:{len(episodes)}"},
                "data_path": _DATA_PATH, "video_path": _VIDEO_PATH, "features": features}
        (meta / "info.json").write_text(json.dumps(info, indent=2))
        (meta / "tasks.jsonl").write_text("".join(json.dumps({"task_index": i, "task": s}) + "\n"
                                                  for i, s in enumerate(tasks)))
        (meta / "episodes.jsonl").write_text("".join(json.dumps(e) + "\n" for e in episodes))

    @classmethod
    def load(cls, root: str | Path, horizon: int | None = None, *, max_text: int = 48,
             image_keys: Sequence[str] | None = None) -> Demonstrations:
        """Read a LeRobot-layout dataset (v2.x) from the local folder ``root``.

        A dataset written by :meth:`save` (``action`` of shape ``[T, A]``) reads back as it was.
        A per-step dataset (``action`` ``[A]``, as LeRobot records) becomes one sample per frame
        whose chunk is the next ``horizon`` actions of its episode, the last action repeated past
        the episode's end (LeRobot's padding). Images come from PNG/JPEG bytes (or files) in the
        parquet rows or from mp4 videos (PyAV). ``image_keys`` picks and orders the cameras
        (default: every ``observation.image*`` feature, sorted).
        """
        pq = _need("pyarrow.parquet")
        root = Path(root)
        info_path = root / "meta" / "info.json"
        if not info_path.is_file():
            raise FileNotFoundError(f"no LeRobot dataset at {str(root)!r} (missing meta/info.json)")
        info = json.loads(info_path.read_text())
        feats = info["features"]
        tasks = {}
        if (root / "meta" / "tasks.jsonl").is_file():
            for line in (root / "meta" / "tasks.jsonl").read_text().splitlines():
                if line.strip():
                    d = json.loads(line)
                    tasks[int(d["task_index"])] = d["task"]
        keys = list(image_keys) if image_keys is not None else sorted(
            k for k, f in feats.items() if k.startswith("observation.image") and f["dtype"] in ("image", "video"))
        if not keys:
            raise ValueError(f"{str(root)!r} has no image features (observation.image*); features: {list(feats)}")
        a_shape = feats["action"]["shape"]
        if len(a_shape) == 1 and horizon is None:
            raise ValueError("this dataset stores one action per frame: pass horizon= (the chunk length)")
        files = sorted((root / "data").glob("chunk-*/episode_*.parquet"))
        if not files:
            raise FileNotFoundError(f"no episode parquet files under {str(root / 'data')!r}")
        acts, states, views, texts, eps = [], [], {k: [] for k in keys}, [], []
        for f in files:
            tab = pq.read_table(f)
            m = tab.num_rows
            e = int(tab.column("episode_index")[0].as_py())
            act = _fixed(tab, "action", int(np.prod(a_shape)))
            if len(a_shape) == 1:
                idx = np.minimum(np.arange(m)[:, None] + np.arange(horizon)[None], m - 1)
                act = act[idx]
            else:
                act = act.reshape(m, *a_shape)
            acts.append(act)
            states.append(_fixed(tab, "observation.state", int(np.prod(feats["observation.state"]["shape"]))))
            ti = tab.column("task_index").to_numpy() if "task_index" in tab.column_names else np.zeros(m, int)
            texts += [tasks.get(int(i), "") for i in ti]
            eps.append(np.full(m, e))
            frames = tab.column("frame_index").to_numpy()
            for k in keys:
                if feats[k]["dtype"] == "video":
                    vpath = root / info.get("video_path", _VIDEO_PATH).format(
                        episode_chunk=e // info.get("chunks_size", _CHUNK), video_key=k, episode_index=e)
                    views[k].append(_decode_video(vpath)[frames])
                else:
                    views[k].append(np.stack([_decode_image(v, root) for v in tab.column(k).to_pylist()]))
        images = [torch.from_numpy(np.concatenate(views[k])).permute(0, 3, 1, 2).contiguous() for k in keys]
        return cls(np.concatenate(acts), np.concatenate(states), images, texts, max_text=max_text,
                   episode_index=np.concatenate(eps))


def _fixed(tab: Any, name: str, size: int) -> np.ndarray:
    """A list column of ``size`` floats per row -> ``[rows, size]`` float32."""
    col = tab.column(name).combine_chunks()
    return np.asarray(col.flatten().to_numpy(zero_copy_only=False), dtype=np.float32).reshape(len(col), size)


def _decode_image(v: Any, root: Path) -> np.ndarray:
    """A LeRobot image cell (``{"bytes", "path"}``) -> ``[H, W, C]`` uint8."""
    image = _need("PIL.Image")
    src = io.BytesIO(v["bytes"]) if v.get("bytes") is not None else root / v["path"]
    arr = np.asarray(image.open(src))
    return arr[..., None] if arr.ndim == 2 else arr[..., :3] if arr.shape[-1] == 4 else arr


def _decode_video(path: Path) -> np.ndarray:
    """Every frame of an mp4 -> ``[F, H, W, 3]`` uint8 (PyAV)."""
    av = _need("av")
    if not path.is_file():
        raise FileNotFoundError(f"missing video {str(path)!r}")
    with av.open(str(path)) as container:
        return np.stack([fr.to_ndarray(format="rgb24") for fr in container.decode(video=0)])


def write_video(path: str | Path, frames: np.ndarray, fps: int = 10) -> None:
    """``[F, H, W, 3]`` uint8 -> a lossless-as-possible mp4 (PyAV, libx264 qp 0); for tests and tools."""
    av = _need("av")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264rgb", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "rgb24"
        stream.options = {"qp": "0"}
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
