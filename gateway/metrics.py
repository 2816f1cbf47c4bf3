"""The job system in Prometheus terms, read from Redis at scrape time: queue depth, running jobs, finished jobs'
outcomes and durations, workers up per queue and their GPU memory."""

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from gateway.state import AppState
from services.jobs.monitoring import DURATION_BUCKETS, queue_depths
from services.jobs.tasks import QUEUE_FOR_TYPE

QUEUES = tuple(QUEUE_FOR_TYPE.values())
JOB_TYPES = tuple(t.value for t in QUEUE_FOR_TYPE)


class JobSystemCollector(Collector):
    def __init__(self, state: AppState):
        self.state = state

    def collect(self) -> Iterator:
        depth = GaugeMetricFamily("detbooth_queue_depth", "tasks waiting in a queue", labels=["queue"])
        for q, n in queue_depths(self.state.celery, QUEUES).items():
            depth.add_metric([q], n)
        yield depth
        running = GaugeMetricFamily("detbooth_jobs_running", "jobs whose status is running", labels=["type"])
        for t, n in self.state.store.stats.running(JOB_TYPES).items():
            running.add_metric([t], n)
        yield running
        yield from self._finished()
        yield from self._workers()

    def _finished(self) -> Iterator:
        outcomes = CounterMetricFamily("detbooth_jobs_finished", "jobs that ended, by outcome",
                                       labels=["type", "status"])
        durations = HistogramMetricFamily("detbooth_job_duration_seconds", "run time of jobs that ended",
                                          labels=["type", "status"])
        for key, row in sorted(self.state.store.stats.finished().items()):
            labels = key.split(":", 1)
            outcomes.add_metric(labels, row.get("count", 0))
            if row.get("timed"):
                le = row.get("buckets", {})
                buckets = [(f"{b:g}", le.get(f"{b:g}", 0)) for b in DURATION_BUCKETS] + [("+Inf", row["timed"])]
                durations.add_metric(labels, buckets, row.get("sum", 0.0))
        yield outcomes
        yield durations

    def _workers(self) -> Iterator:
        workers = self.state.workers.workers()
        up = GaugeMetricFamily("detbooth_workers_up", "workers whose heartbeat is fresh", labels=["queue"])
        for q in QUEUES:
            up.add_metric([q], sum(w.up for w in workers if q in w.queues))
        yield up
        used = GaugeMetricFamily("detbooth_worker_gpu_memory_used_bytes", "GPU memory in use on a worker's GPU",
                                 labels=["worker", "gpu"])
        total = GaugeMetricFamily("detbooth_worker_gpu_memory_total_bytes", "GPU memory of a worker's GPU",
                                  labels=["worker", "gpu"])
        for w in workers:
            for g in w.gpus if w.up else []:
                used.add_metric([w.name, g.index], g.used_bytes)
                total.add_metric([w.name, g.index], g.total_bytes)
        yield used
        yield total


def job_system_metrics(state: AppState) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(JobSystemCollector(state))
    return generate_latest(registry)
