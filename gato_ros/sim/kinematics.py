"""Inverse kinematics of the arm's tool centre point by damped least squares on MuJoCo Jacobians.

Used by the scripted expert to turn Cartesian waypoints (above the cube, at the cube, above the bowl ...) into joint
targets. Works on its own `MjData`, so solving never disturbs the simulation. Damped least squares:
dq = J^T (J J^T + lambda^2 I)^-1 e (Wampler 1986; Buss 2004, "Introduction to inverse kinematics with Jacobian
transpose, pseudoinverse and damped least squares methods").
"""
from __future__ import annotations

import numpy as np

from gato_ros.sim.backend import import_mujoco

mujoco = import_mujoco()

ARM_JOINTS = (
    "shoulder_pan_joint",
    "shoulder_lift_joint",
    "elbow_joint",
    "wrist_1_joint",
    "wrist_2_joint",
    "wrist_3_joint",
)


class ArmIK:
    """Position + orientation IK for the six arm joints, solved for the site `site` (default: "tcp")."""

    def __init__(self, model, site: str = "tcp", damping: float = 1e-3):
        self.model = model
        self.data = mujoco.MjData(model)
        self.site = site
        self.damping = damping
        self._qadr = np.array([model.joint(n).qposadr[0] for n in ARM_JOINTS])
        self._dadr = np.array([model.joint(n).dofadr[0] for n in ARM_JOINTS])
        self._range = np.array([model.joint(n).range for n in ARM_JOINTS])  # (6, 2)
        self._jacp = np.zeros((3, model.nv))
        self._jacr = np.zeros((3, model.nv))

    def forward(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Site position (3,) and rotation matrix (3, 3) for arm joints q (6,)."""
        self.data.qpos[self._qadr] = q
        mujoco.mj_kinematics(self.model, self.data)
        s = self.data.site(self.site)
        return s.xpos.copy(), s.xmat.reshape(3, 3).copy()

    def solve(self, pos, rot, q_init, iterations: int = 200, tol: float = 1e-4) -> tuple[np.ndarray, float]:
        """Joint angles (6,) putting the site at `pos` (3,) with orientation `rot` (3, 3), starting from `q_init`.

        Returns (q, residual) where residual is the final position error in metres; callers decide whether it is
        good enough (the expert raises if a waypoint is out of reach).
        """
        m, d = self.model, self.data
        q = np.array(q_init, dtype=np.float64)
        pos = np.asarray(pos, dtype=np.float64)
        rot = np.asarray(rot, dtype=np.float64)
        lam2 = self.damping**2
        err = np.zeros(6)
        for _ in range(iterations):
            d.qpos[self._qadr] = q
            mujoco.mj_kinematics(m, d)
            mujoco.mj_comPos(m, d)
            s = d.site(self.site)
            cur = s.xmat.reshape(3, 3)
            err[:3] = pos - s.xpos
            # Orientation error as a world-frame rotation vector (small-angle): 0.5 * sum_i cur_i x rot_i.
            err[3:] = 0.5 * sum(np.cross(cur[:, i], rot[:, i]) for i in range(3))
            if np.linalg.norm(err[:3]) < tol and np.linalg.norm(err[3:]) < 10 * tol:
                break
            mujoco.mj_jacSite(m, d, self._jacp, self._jacr, s.id)
            jac = np.vstack([self._jacp[:, self._dadr], self._jacr[:, self._dadr]])  # (6, 6)
            dq = jac.T @ np.linalg.solve(jac @ jac.T + lam2 * np.eye(6), err)
            # Limit the update so a far target does not fling the solution through a singularity.
            norm = np.linalg.norm(dq)
            if norm > 0.3:
                dq *= 0.3 / norm
            q = np.clip(q + dq, self._range[:, 0], self._range[:, 1])
        d.qpos[self._qadr] = q
        mujoco.mj_kinematics(m, d)
        return q, float(np.linalg.norm(pos - d.site(self.site).xpos))
