"""Language-conditioned table-top tasks: layout sampling, instruction templates and success predicates.

Both tasks share one grid of six object slots in front of the arm (two rows of three, 20-24 cm apart) so a policy
that learns where the slots are can reuse it across tasks, and each episode places its objects in randomly chosen
slots with a small random offset and yaw. Colours and shapes are drawn so that **only the instruction picks the
target**: the target's place, shape and colour are random, and every other object is a plausible target for a
different instruction.

| task | instruction | objects | success |
|---|---|---|---|
| `reach` | "reach the {colour} {shape}" | 4 objects of {cube, ball, cylinder}, one of each colour {red, green, blue, yellow} (or, with `reach_distractors="attribute"`, one sharing the target's colour and one its shape) | tool centre point within 3 cm of the target's surface |
| `pick_place` | "put the {colour} cube in the {colour} bowl" | 3 cubes (distinct colours) in the near row, 2 bowls (distinct colours) in the far row (or, with `pick_place_layout="any"`, anywhere) | target cube resting inside the target bowl (centre within 5.5 cm of the bowl axis, below 5 cm height) and not touching the fingers |
| `point_above` (variant) | "point above the {colour} {shape}" | as `reach` (same layout for the same seed) | tool centre point held still (< 5 cm/s) 17.5-22.5 cm above the table (11-15 cm above the object's top) and within 3 cm of the object's vertical axis |

`TASKS` are the original tasks: the default rotation of the env and the sim node, and what `--task all` means; the
shipped model, its data and its evaluations depend on them and on their layouts per seed. `VARIANTS` are tasks
added later to show fine-tuning on something new (issue 7); they are only used when named.

Geometry (metres, world frame; the arm base is at the origin, the table top at z = 0): slots at x in {0.36, 0.60},
y in {-0.10, 0.10, 0.30}; cubes 50 mm, balls 56 mm diameter, cylinders 44 mm x 90 mm, bowls 140 mm across with a
42 mm rim (sim/scene.xml).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

COLOURS: dict[str, tuple[float, float, float]] = {
    # Saturated, well-separated hues: at 64x64 an object covers ~5x5 pixels, so hue carries the identity.
    "red": (0.85, 0.12, 0.10),
    "green": (0.12, 0.65, 0.18),
    "blue": (0.12, 0.25, 0.90),
    "yellow": (0.95, 0.82, 0.10),
}
SHAPES = ("cube", "ball", "cylinder")
POOL_SIZE = {"cube": 3, "ball": 3, "cylinder": 3, "bowl": 2}  # bodies <kind>_<i> in sim/scene.xml

# (6, 2) slot centres, x then y (m). Row order: far row (x=0.36) left to right as seen from the camera, then near.
SLOTS = np.array([[0.36, -0.10], [0.36, 0.10], [0.36, 0.30], [0.60, -0.10], [0.60, 0.10], [0.60, 0.30]])
# Where unused pool objects wait: floating behind the scene camera, outside its view, with collisions off.
PARK_X, PARK_Z = 2.5, 0.5

REACH_DISTRACTORS = ("colour", "attribute")
PICK_PLACE_LAYOUTS = ("rows", "any")
REACH_SUCCESS_DISTANCE = 0.03  # m, issue 4: "end effector within 3 cm of the named object"
BOWL_INNER_RADIUS = 0.055  # m: rim walls sit at 60-72 mm; a 50 mm cube centre inside 55 mm is inside the rim
BOWL_MAX_HEIGHT = 0.05  # m: a cube resting on the 12 mm base has its centre at 37 mm
# point_above: a fixed tool height for every shape (as reach's fixed heights), 6 cm above reach's approach height
# (14 cm), so reaching -- passing 14 cm, ending at 7.5 cm -- never counts as pointing.
POINT_ABOVE_HEIGHT = 0.20  # m above the table: 11 cm over a cylinder's top, 14.4 cm over a ball's, 15 cm over a cube's
POINT_ABOVE_HEIGHT_TOLERANCE = 0.025  # m
POINT_ABOVE_XY_TOLERANCE = 0.03  # m from the object's vertical axis (reach's 3 cm)
POINT_ABOVE_MAX_SPEED = 0.05  # m/s: "stop above" -- moving through the zone is not pointing


@dataclass(frozen=True)
class PlacedObject:
    """One pool body placed on the table for this episode."""

    body: str  # pool body (and geom) name in scene.xml, e.g. "cube_1" or "bowl_0"
    kind: str  # cube | ball | cylinder | bowl
    colour: str  # key of COLOURS
    xy: tuple[float, float]  # table position (m)
    yaw: float  # rad about +z
    slot: int  # index into SLOTS


@dataclass(frozen=True)
class Layout:
    """Everything random about one episode; a pure function of (task, seed)."""

    task: str
    instruction: str
    objects: tuple[PlacedObject, ...]
    target: str  # body name of the object to reach / pick
    receptacle: str | None = None  # body name of the bowl (pick_place)
    extras: dict = field(default_factory=dict)

    def object(self, body: str) -> PlacedObject:
        for o in self.objects:
            if o.body == body:
                return o
        raise KeyError(body)


def _place(rng: np.random.Generator, kinds_colours: list[tuple[str, str]], jitter: float,
           yaw_range: float, slots: np.ndarray | None = None) -> tuple[PlacedObject, ...]:
    """Assign pool bodies and slots to (kind, colour) pairs, in order (random distinct slots unless given)."""
    if slots is None:
        slots = rng.permutation(len(SLOTS))[: len(kinds_colours)]
    used: dict[str, int] = {}
    placed = []
    for (kind, colour), slot in zip(kinds_colours, slots):
        i = used.get(kind, 0)
        if i >= POOL_SIZE[kind]:
            raise ValueError(f"layout needs more than {POOL_SIZE[kind]} {kind}s; the scene has {POOL_SIZE[kind]}")
        used[kind] = i + 1
        offset = rng.uniform(-jitter, jitter, size=2)
        yaw = float(rng.uniform(-yaw_range, yaw_range))
        xy = SLOTS[slot] + offset
        placed.append(PlacedObject(f"{kind}_{i}", kind, colour, (float(xy[0]), float(xy[1])), yaw, int(slot)))
    return tuple(placed)


class Task:
    """A task: a name, an episode budget, a layout sampler and a success predicate."""

    name: str = ""
    max_steps: int = 0

    def sample(self, rng: np.random.Generator, jitter: float, yaw_range: float) -> Layout:
        raise NotImplementedError

    def success(self, model, data, layout: Layout) -> bool:
        raise NotImplementedError

    def outcome(self, model, data, layout: Layout) -> str:
        """How the episode ended, a key of `OUTCOME_HELP` (evaluations count them): where a failed policy went
        wrong."""
        return "success" if self.success(model, data, layout) else "failure"


OUTCOME_HELP = {
    "success": "the task's success test holds at the end",
    "other object": "the tool ends nearest (horizontally) to an object that was not named",
    "missed": "nearest to the named object, but not within reach of it",
    "too low": "above the named object (within the tolerance) but below the height band",
    "too high": "above the named object but over the height band",
    "moving": "above the named object at the right height, still moving faster than the limit",
    "other bowl": "the named cube lies in the bowl that was not named",
    "other cube": "the named cube is where it started and another cube was moved",
    "held": "the named cube is still in the gripper",
    "dropped": "the named cube was moved but lies outside both bowls",
    "untouched": "no cube was moved",
    "failure": "the task failed (no finer outcome defined)",
}


def _nearest_object(data, layout: Layout) -> str:
    """Body of the layout object horizontally nearest to the tool centre point."""
    tcp = data.site("tcp").xpos
    return min((o.body for o in layout.objects), key=lambda b: np.hypot(*(tcp[:2] - data.body(b).xpos[:2])))


def surface_distance(model, data, geom: str, point: np.ndarray) -> float:
    """Distance (m) from a world point to the surface of a box, sphere or cylinder geom (0 inside)."""
    g = data.geom(geom)
    p = g.xmat.reshape(3, 3).T @ (point - g.xpos)  # point in the geom frame
    size = model.geom(geom).size
    gtype = int(model.geom(geom).type[0])
    import mujoco  # already imported by the env (backend chosen there)

    if gtype == mujoco.mjtGeom.mjGEOM_BOX:
        return float(np.linalg.norm(np.maximum(np.abs(p) - size, 0.0)))
    if gtype == mujoco.mjtGeom.mjGEOM_SPHERE:
        return float(max(np.linalg.norm(p) - size[0], 0.0))
    if gtype == mujoco.mjtGeom.mjGEOM_CYLINDER:
        radial = max(np.hypot(p[0], p[1]) - size[0], 0.0)
        axial = max(abs(p[2]) - size[1], 0.0)
        return float(np.hypot(radial, axial))
    raise ValueError(f"surface_distance supports box, sphere and cylinder geoms; {geom!r} has type {gtype}")


class Reach(Task):
    """Move the tool centre point to within 3 cm of the named object.

    Two distractor schemes (EnvConfig.reach_distractors):
    - "colour" (default): the four objects have four different colours and random shapes, so the colour word
      alone identifies the target (the shape word is still said and always true). At 64x64 an object is ~5 px wide:
      hue is a robust cue there, shape much less so, and this is the scheme a small model learns in a CPU budget.
    - "attribute": one distractor shares the target's colour and another its shape, so the policy must bind both
      words to the image (harder; for larger models or images).
    """

    name = "reach"
    max_steps = 60  # 3 s at 20 Hz; the expert needs ~18 steps

    def __init__(self, distractors: str = "colour"):
        if distractors not in REACH_DISTRACTORS:
            raise ValueError(f"reach distractors must be one of {REACH_DISTRACTORS}, got {distractors!r}")
        self.distractors = distractors

    def sample(self, rng, jitter, yaw_range):
        colours, shapes = list(COLOURS), list(SHAPES)
        if self.distractors == "colour":
            order = rng.permutation(len(colours))
            chosen = [(shapes[rng.integers(len(shapes))], colours[i]) for i in order[:4]]
            # Respect the pool (three bodies per shape): redraw the shape of any fourth of a kind.
            while max(sum(1 for s, _ in chosen if s == k) for k in shapes) > 3:
                chosen[-1] = (shapes[rng.integers(len(shapes))], chosen[-1][1])
            shape, colour = chosen[0]
        else:
            colour = colours[rng.integers(len(colours))]
            shape = shapes[rng.integers(len(shapes))]
            other_shape = [s for s in shapes if s != shape][rng.integers(len(shapes) - 1)]
            other_colour = [c for c in colours if c != colour][rng.integers(len(colours) - 1)]
            chosen = [(shape, colour), (other_shape, colour), (shape, other_colour)]
            # One more object of any (shape, colour) not yet on the table.
            rest = [(s, c) for s in shapes for c in colours if (s, c) not in chosen]
            chosen.append(rest[rng.integers(len(rest))])
        objects = _place(rng, chosen, jitter, yaw_range)
        return Layout(self.name, f"reach the {colour} {shape}", objects, target=objects[0].body)

    def success(self, model, data, layout):
        tcp = data.site("tcp").xpos
        return surface_distance(model, data, layout.target, tcp) < REACH_SUCCESS_DISTANCE

    def outcome(self, model, data, layout):
        if self.success(model, data, layout):
            return "success"
        return "other object" if _nearest_object(data, layout) != layout.target else "missed"


class PickPlace(Task):
    """Pick the named cube and put it in the named bowl.

    Two layout schemes (EnvConfig.pick_place_layout):
    - "rows" (default): the three cubes fill the near row (closest to the camera, so they are largest in the image
      where the grasp needs precision) in a random colour order; the two bowls take two random slots of the far
      row. The policy has 3 grasp places and 3 drop places to learn; which one is meant is still only in the
      instruction.
    - "any": cubes and bowls in any five of the six slots (30 grasp/drop place pairs).
    """

    name = "pick_place"
    max_steps = 150  # 7.5 s at 20 Hz; the expert needs ~60 steps

    def __init__(self, layout: str = "rows"):
        if layout not in PICK_PLACE_LAYOUTS:
            raise ValueError(f"pick_place layout must be one of {PICK_PLACE_LAYOUTS}, got {layout!r}")
        self.layout = layout

    def sample(self, rng, jitter, yaw_range):
        colours = list(COLOURS)
        cube_colours = [colours[i] for i in rng.permutation(len(colours))[:3]]
        bowl_colours = [colours[i] for i in rng.permutation(len(colours))[:2]]
        target_cube = int(rng.integers(3))
        target_bowl = int(rng.integers(2))
        chosen = [("cube", c) for c in cube_colours] + [("bowl", c) for c in bowl_colours]
        slots = None
        if self.layout == "rows":
            near = np.flatnonzero(SLOTS[:, 0] > SLOTS[:, 0].mean())  # x = 0.60 row, nearer the camera
            far = np.flatnonzero(SLOTS[:, 0] < SLOTS[:, 0].mean())
            slots = np.concatenate([rng.permutation(near), rng.permutation(far)[:2]])
        objects = _place(rng, chosen, jitter, yaw_range, slots)
        cube, bowl = objects[target_cube], objects[3 + target_bowl]
        return Layout(
            self.name,
            f"put the {cube.colour} cube in the {bowl.colour} bowl",
            objects,
            target=cube.body,
            receptacle=bowl.body,
        )

    def success(self, model, data, layout):
        return _inside_bowl(data, layout.target, layout.receptacle) and not _touching_fingers(model, data,
                                                                                              layout.target)

    def outcome(self, model, data, layout):
        if self.success(model, data, layout):
            return "success"
        if _touching_fingers(model, data, layout.target):
            return "held"
        if any(_inside_bowl(data, layout.target, o.body) for o in layout.objects
               if o.kind == "bowl" and o.body != layout.receptacle):
            return "other bowl"

        def moved(o: PlacedObject) -> bool:
            return bool(np.hypot(*(data.body(o.body).xpos[:2] - np.asarray(o.xy))) > 0.02)

        if moved(layout.object(layout.target)):
            return "dropped"
        others = [o for o in layout.objects if o.kind == "cube" and o.body != layout.target]
        return "other cube" if any(moved(o) for o in others) else "untouched"


class PointAbove(Reach):
    """Stop the tool centre point above the named object (the fine-tuning variant of reach, issue 7).

    Same objects and distractors as `reach` -- for a given seed, the same layout -- with a new verb and a new goal:
    hover `POINT_ABOVE_HEIGHT` over the object and stay there. Staying close to an existing skill with a new word
    and goal is Gato's few-shot setting (Reed et al. 2022, Sec. 5.2): the shipped model reaches but was never
    told to stop higher up.
    """

    name = "point_above"
    max_steps = 60  # as reach; the expert needs ~25 steps (move, then settle below the speed limit)

    def sample(self, rng, jitter, yaw_range):
        layout = super().sample(rng, jitter, yaw_range)
        target = layout.object(layout.target)
        return replace(layout, instruction=f"point above the {target.colour} {target.kind}")

    def success(self, model, data, layout):
        import mujoco  # already imported by the env (backend chosen there)

        tcp = data.site("tcp").xpos
        centre = data.body(layout.target).xpos
        over = np.hypot(*(tcp[:2] - centre[:2])) < POINT_ABOVE_XY_TOLERANCE
        high = abs(tcp[2] - POINT_ABOVE_HEIGHT) < POINT_ABOVE_HEIGHT_TOLERANCE
        if not (over and high):
            return False
        velocity = np.zeros(6)  # (angular, linear) in the world frame
        mujoco.mj_objectVelocity(model, data, mujoco.mjtObj.mjOBJ_SITE, model.site("tcp").id, velocity, 0)
        return bool(np.linalg.norm(velocity[3:]) < POINT_ABOVE_MAX_SPEED)

    def outcome(self, model, data, layout):
        if self.success(model, data, layout):
            return "success"
        if _nearest_object(data, layout) != layout.target:
            return "other object"
        tcp, centre = data.site("tcp").xpos, data.body(layout.target).xpos
        if np.hypot(*(tcp[:2] - centre[:2])) >= POINT_ABOVE_XY_TOLERANCE:
            return "missed"
        if tcp[2] < POINT_ABOVE_HEIGHT - POINT_ABOVE_HEIGHT_TOLERANCE:
            return "too low"
        return "too high" if tcp[2] > POINT_ABOVE_HEIGHT + POINT_ABOVE_HEIGHT_TOLERANCE else "moving"


def _inside_bowl(data, body: str, bowl: str) -> bool:
    """True if the body's centre lies inside the bowl's rim, below its top (resting in it or dropped into it)."""
    c, b = data.body(body).xpos, data.body(bowl).xpos
    return bool(np.hypot(*(c[:2] - b[:2])) < BOWL_INNER_RADIUS and 0.0 < c[2] - b[2] < BOWL_MAX_HEIGHT)


def _touching_fingers(model, data, geom: str) -> bool:
    """True if the named geom is in contact with either finger pad (i.e. still held)."""
    gid = model.geom(geom).id
    pads = [model.geom("left_pad").id, model.geom("right_pad").id]
    g1, g2 = data.contact.geom1, data.contact.geom2  # (ncon,) each
    return bool(np.any(((g1 == gid) & np.isin(g2, pads)) | ((g2 == gid) & np.isin(g1, pads))))

# The original tasks (default rotation, "all"); variants only when named. See the module docstring.
TASKS: dict[str, Task] = {t.name: t for t in (Reach(), PickPlace())}
VARIANTS: dict[str, Task] = {t.name: t for t in (PointAbove(),)}


def task_names() -> list[str]:
    """Every task `get_task` knows: the original tasks, then the variants."""
    return sorted(TASKS) + sorted(VARIANTS)


def get_task(name: str, reach_distractors: str = "colour", pick_place_layout: str = "rows") -> Task:
    """The task called `name` with the given layout schemes, or a ValueError listing the known tasks."""
    if name not in TASKS and name not in VARIANTS:
        raise ValueError(f"unknown task {name!r}; expected one of {task_names()}")
    if name in ("reach", "point_above") and reach_distractors != "colour":
        return type(VARIANTS.get(name) or TASKS[name])(reach_distractors)
    if name == "pick_place" and pick_place_layout != "rows":
        return PickPlace(pick_place_layout)
    return TASKS.get(name) or VARIANTS[name]
