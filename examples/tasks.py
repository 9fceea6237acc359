"""The quickstart's application: the app, its state and one task (shared by publisher and worker).

Settings come from the environment (see ``boilermaker.config.Config``):
SERVICE_BUS_CONNECTION_STRING (the local emulator prints one) or
SERVICE_BUS_NAMESPACE_URL (Azure, signed in with DefaultAzureCredential),
and SERVICE_BUS_QUEUE_NAME.
"""

# docs-test: needs servicebus

import asyncio

from boilermaker import Boilermaker, retries
from boilermaker.config import Config
from boilermaker.service_bus import AzureServiceBus


class AppState:
    """Shared by every task this process runs (passed as their first argument)."""

    def __init__(self) -> None:
        self.data = {"processed_count": 0}


config = Config()  # reads the environment variables above
service_bus = AzureServiceBus.from_config(config)
app = Boilermaker(AppState(), service_bus)


async def process_data(state: AppState, data_id: str, priority: str = "normal") -> str:
    """Process one piece of data in the background."""
    print(f"Processing data {data_id} with priority {priority}", flush=True)
    state.data["processed_count"] += 1
    await asyncio.sleep(1)  # the real work would go here
    return f"Processed {data_id}"


# Five tries, two minutes apart, if the task raises RetryException.
app.register_async(process_data, policy=retries.RetryPolicy.default())
