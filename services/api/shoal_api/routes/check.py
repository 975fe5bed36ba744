"""The consistency checker on demand (``shoal check``)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from shoal.infra import checker
from shoal_api.deps import VIEWER, Res
from shoal_api.models import CheckReport
from shoal_api.problems import ERRORS

router = APIRouter(prefix="/api/v1", tags=["operations"], dependencies=[VIEWER],
                   responses=ERRORS)


@router.get("/check", response_model=CheckReport)
async def check(res: Res,
                since: Annotated[int, Query(ge=0, description="only instances with events "
                                                          "after this global position; 0 = all")
                                 ] = 0,
                grace: Annotated[float, Query(ge=0, le=86400, description="seconds a running "
                                                                          "run may sit idle")
                                 ] = 60.0) -> dict[str, Any]:
    """Check the read models against the log and the log's own rules; every violation
    names the instance and the event (seq). ``until`` is the position checked up to: pass
    it as ``since`` next time to check only what changed."""
    report, _ = await checker.check(res.pool, since=since, grace=grace)
    return report.as_dict()
