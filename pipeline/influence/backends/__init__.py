"""Curvature back-ends. Each module registers its back-end(s) with
:func:`~infgate.influence.backends.base.register_backend` when imported; importing this
package registers every built-in one."""

from infgate.influence.backends import arnoldi as _arnoldi  # noqa: F401  ("arnoldi")
from infgate.influence.backends import cg as _cg  # noqa: F401  ("cg")
from infgate.influence.backends import ekfac as _ekfac  # noqa: F401  ("ekfac", "kfac")
from infgate.influence.backends import exact as _exact  # noqa: F401  ("exact")
from infgate.influence.backends import lissa as _lissa  # noqa: F401  ("lissa")
from infgate.influence.backends import tracin as _tracin  # noqa: F401  ("tracin")
from infgate.influence.backends.base import Backend, available_backends, register_backend

__all__ = ["Backend", "available_backends", "register_backend"]
