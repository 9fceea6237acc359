"""Publish two tasks (the quickstart, step 1): ``python publisher.py``."""

# docs-test: needs servicebus

import asyncio

from tasks import app, process_data


async def publish_tasks() -> None:
    task = await app.apply_async(process_data, "data_123")
    print(f"published {task.function_name} as task {task.task_id}")

    task = await app.apply_async(process_data, "data_456", priority="high")
    print(f"published {task.function_name} as task {task.task_id}")

    await app.close()  # close the pooled connections


if __name__ == "__main__":
    asyncio.run(publish_tasks())
