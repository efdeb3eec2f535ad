using System.Diagnostics.Metrics;
using PortAzure.Diagnostics;
using PortAzure.Dispatcher.Delivery;

namespace PortAzure.Dispatcher.Diagnostics;

/// <summary>The Dispatcher's instruments, all on the project's one Meter (names in the README).</summary>
internal sealed class DispatcherMetrics
{
    private readonly Counter<long> _attempts;
    private readonly Histogram<double> _attemptDuration;
    private readonly Histogram<double> _deliveryLatency;
    private readonly Counter<long> _deadLetters;
    private readonly Counter<long> _pausedSkips;
    private readonly Counter<long> _portReports;

    public DispatcherMetrics(IMeterFactory meterFactory, BacklogMonitor backlog)
    {
        var meter = meterFactory.Create(PortAzureDiagnostics.Name);
        _attempts = meter.CreateCounter<long>("portazure.dispatch.attempts", "{attempt}", "POSTs to Azure DevOps, by outcome and status class.");
        _attemptDuration = meter.CreateHistogram<double>("portazure.dispatch.attempt.duration", "s", "Duration of one POST to Azure DevOps.");
        _deliveryLatency = meter.CreateHistogram<double>("portazure.delivery.latency", "s", "From the Ingress receiving a run to Azure DevOps accepting it.");
        _deadLetters = meter.CreateCounter<long>("portazure.dispatch.deadletters", "{delivery}", "Deliveries dead-lettered, by reason.");
        _pausedSkips = meter.CreateCounter<long>("portazure.dispatch.paused_reschedules", "{delivery}", "Deliveries held back because their target is paused.");
        _portReports = meter.CreateCounter<long>("portazure.port.reports", "{report}", "Reports sent to Port's API, by outcome.");
        meter.CreateObservableGauge("portazure.backlog.stream_length", () => backlog.Current.StreamLength, "{entry}", "Entries in the stream (queued or in flight).");
        meter.CreateObservableGauge("portazure.backlog.pending", () => backlog.Current.Pending, "{entry}", "Entries read by a Dispatcher and not yet finished.");
        meter.CreateObservableGauge("portazure.backlog.scheduled_retries", () => backlog.Current.ScheduledRetries, "{delivery}", "Deliveries waiting for a retry.");
        meter.CreateObservableGauge("portazure.backlog.deadletters", () => backlog.Current.DeadLetters, "{delivery}", "Dead letters waiting for an operator.");
        meter.CreateObservableGauge("portazure.backlog.paused_targets", () => backlog.Current.PausedTargets, "{target}", "Targets paused after repeated transient failures.");
        meter.CreateObservableGauge("portazure.backlog.port_reports", () => backlog.Current.PortReports, "{report}",
            "Reports to Port waiting to be sent or retried (the newest 100,000 are kept).");
        meter.CreateObservableGauge("portazure.backlog.oldest_age", () => backlog.Current.OldestAge.TotalSeconds, "s", "Age of the oldest entry in the stream.");
    }

    public void Attempt(AttemptResult result)
    {
        var outcome = new KeyValuePair<string, object?>("outcome", result.Outcome.ToString().ToLowerInvariant());
        var statusClass = new KeyValuePair<string, object?>("status_class", result.StatusClass);
        _attempts.Add(1, outcome, statusClass);
        _attemptDuration.Record(result.Duration.TotalSeconds, outcome);
    }

    public void Delivered(TimeSpan latency) => _deliveryLatency.Record(Math.Max(0, latency.TotalSeconds));

    public void DeadLettered(string reason) => _deadLetters.Add(1, new KeyValuePair<string, object?>("reason", reason));

    public void Paused() => _pausedSkips.Add(1);

    public void PortReport(string outcome, int count = 1) => _portReports.Add(count, new KeyValuePair<string, object?>("outcome", outcome));
}
