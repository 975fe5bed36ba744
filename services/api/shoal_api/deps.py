"""Request-scoped access to the resources opened in the app's lifespan."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import asyncpg
from aiokafka import AIOKafkaProducer
from fastapi import Depends, Request

from shoal.infra.settings import Settings
from shoal.infra.store import EventStore


@dataclass
class Resources:
    settings: Settings
    pool: asyncpg.Pool
    producer: AIOKafkaProducer
    store: EventStore


def _resources(request: Request) -> Resources:
    res: Resources = request.app.state.resources
    return res


Res = Annotated[Resources, Depends(_resources)]
