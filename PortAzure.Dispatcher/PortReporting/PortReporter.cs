using System.Diagnostics;
using Microsoft.Extensions.Options;
using PortAzure.Redis;
using PortAzure.Security;
using StackExchange.Redis;

namespace PortAzure.Dispatcher.PortReporting;

/// <summary>A run log line for Port's API, with an optional final status.</summary>
/// <param name="TraceParent">The span that decided the outcome (the attempt's, else the run's): the report's calls join its trace.</param>
/// <param name="TraceState">That span's W3C tracestate (Port's, passed on), if any.</param>
internal sealed record PortReport(string RunId, string DeliveryId, string Message, string? TerminationStatus, string? StatusLabel, string? TraceParent = null,
    string? TraceState = null)
{
    private const string RunIdField = "run";
    private const string DeliveryIdField = "id";
    private const string MessageField = "message";
    private const string TerminationStatusField = "status";
    private const string StatusLabelField = "label";
    private const string TraceParentField = "traceparent";
    private const string TraceStateField = "tracestate";

    public NameValueEntry[] ToStreamFields()
    {
        List<NameValueEntry> fields = [new(RunIdField, RunId), new(DeliveryIdField, DeliveryId), new(MessageField, Message)];
        if (TerminationStatus is not null)
        {
            fields.Add(new(TerminationStatusField, TerminationStatus));
            fields.Add(new(StatusLabelField, StatusLabel ?? ""));
        }
        if (TraceParent is not null)
        {
            fields.Add(new(TraceParentField, TraceParent));
            if (TraceState is not null)
            {
                fields.Add(new(TraceStateField, TraceState));
            }
        }
        return [.. fields];
    }

    /// <summary>The report in a stream entry, or null when the entry is not one (damaged, or trimmed away).</summary>
    public static PortReport? FromStreamEntry(StreamEntry entry)
    {
        if (entry.IsNull)
        {
            return null;
        }
        string? Get(string name) => entry[name] is { IsNullOrEmpty: false } value ? (string?)value : null;
        return Get(RunIdField) is { } runId && Get(DeliveryIdField) is { } deliveryId && Get(MessageField) is { } message
            ? new PortReport(runId, deliveryId, message, Get(TerminationStatusField), Get(StatusLabelField), Get(TraceParentField), Get(TraceStateField))
            : null;
    }
}

/// <summary>
/// Words a run's fate for Port. The report is written to Redis in the same step that records the
/// outcome (<see cref="Delivery.DeliveryStore.FinishAsync"/>), and <see cref="PortReportingService"/>
/// sends it: a delivery is never held up or repeated because of Port's API, and a crash loses no report.
/// </summary>
internal sealed class PortReporter(IOptionsMonitor<PortOptions> portOptions)
{
    public bool Enabled => portOptions.CurrentValue is { ClientId.Length: > 0, ClientSecret.Length: > 0 };

    /// <returns>Null when reporting is off or the run has no Port run id.</returns>
    public PortReport? Delivered(DeliveryEntry entry, int statusCode)
    {
        ArgumentNullException.ThrowIfNull(entry);
        return Create(entry, $"PortAzure delivered the run to Azure DevOps {entry.Org}/{entry.Webhook} (HTTP {statusCode}); delivery {entry.DeliveryId}.", null, null);
    }

    /// <returns>Null when reporting is off or the run has no Port run id.</returns>
    public PortReport? DeadLettered(DeliveryEntry entry, string reason, string hint)
    {
        ArgumentNullException.ThrowIfNull(entry);
        var message = $"PortAzure could not deliver the run to Azure DevOps {entry.Org}/{entry.Webhook} ({reason}): {hint} Delivery {entry.DeliveryId}.";
        return portOptions.CurrentValue.TerminateRunOnDeadLetter
            ? Create(entry, message, "FAILURE", "Delivery to Azure DevOps failed")
            : Create(entry, message, null, null);
    }

    private PortReport? Create(DeliveryEntry entry, string message, string? terminationStatus, string? statusLabel)
    {
        if (entry.RunId is null || !Enabled)
        {
            return null;
        }
        // The attempt's span when one is recorded (the report then sits beside the Azure POST); else the run's.
        var (traceParent, traceState) = Activity.Current is { IdFormat: ActivityIdFormat.W3C, Recorded: true } current
            ? (current.Id, current.TraceStateString)
            : (entry.TraceParent, entry.TraceState);
        return new PortReport(entry.RunId, entry.DeliveryId, message, terminationStatus, statusLabel, traceParent, traceState);
    }
}
