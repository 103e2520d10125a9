"""One partner wired for the daemon and for backfill alike: client, builder, feed, scan."""

from __future__ import annotations

import asyncio

import aiohttp

from poller.events import EventBuilder, PiiPolicy
from poller.glance.client import Gate, GlanceClient
from poller.limiter import HeldPages
from poller.publisher import Publisher
from poller.settings import Partner, Settings
from poller.state import StateStore
from poller.streams.feed import PartnerFeed
from poller.streams.scan import Scanner


def wire_partner(
    http: aiohttp.ClientSession,
    settings: Settings,
    partner: Partner,
    publisher: Publisher,
    state: StateStore,
    stopping: asyncio.Event,
    *,
    started_enabled: bool,
    gate: Gate | None = None,
    held: HeldPages | None = None,
) -> Scanner:
    client = GlanceClient(http, settings.glance, partner, settings.retry, gate)
    builder = EventBuilder(partner.id, settings.topics, PiiPolicy.from_settings(settings.events))
    feed = PartnerFeed(partner.id, builder, publisher, state, started_enabled=started_enabled)
    return Scanner(client, feed, settings.glance.page_size, stopping, held)
