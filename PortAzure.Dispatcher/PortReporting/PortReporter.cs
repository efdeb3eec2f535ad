using System.Threading.Channels;
using Microsoft.Extensions.Options;
using PortAzure.Dispatcher.Diagnostics;
using PortAzure.Redis;
using PortAzure.Security;

namespace PortAzure.Dispatcher.PortReporting;

/// <summary>A run log line for Port's API, with an optional final status.</summary>
internal sealed record PortReport(string RunId, string DeliveryId, string Message, string? TerminationStatus, string? StatusLabel);

/// <summary>
/// Queues reports of a run's fate for Port. Never waits: a delivery is never held up, and never
/// repeated, because of Port's API. Reports are kept in memory (at most
/// <see cref="Capacity"/>); a crash loses the ones not yet sent.
/// </summary>
internal sealed partial class PortReporter(IOptionsMonitor<PortOptions> portOptions, DispatcherMetrics metrics, ILogger<PortReporter> logger)
{
    public const int Capacity = 10_000;
    private readonly Channel<PortReport> _queue = Channel.CreateBounded<PortReport>(new BoundedChannelOptions(Capacity)
    {
        FullMode = BoundedChannelFullMode.DropWrite,
        SingleWriter = false,
    });

    public ChannelReader<PortReport> Reader => _queue.Reader;

    public bool Enabled => portOptions.CurrentValue is { ClientId.Length: > 0, ClientSecret.Length: > 0 };

    public void Delivered(DeliveryEntry entry, int statusCode)
    {
        ArgumentNullException.ThrowIfNull(entry);
        Enqueue(entry, $"PortAzure delivered the run to Azure DevOps {entry.Org}/{entry.Webhook} (HTTP {statusCode}); delivery {entry.DeliveryId}.", null, null);
    }

    public void DeadLettered(DeliveryEntry entry, string reason, string hint)
    {
        ArgumentNullException.ThrowIfNull(entry);
        Enqueue(entry, $"PortAzure could not deliver the run to Azure DevOps {entry.Org}/{entry.Webhook} ({reason}): {hint} Delivery {entry.DeliveryId}.",
            "FAILURE", "Delivery to Azure DevOps failed");
    }

    private void Enqueue(DeliveryEntry entry, string message, string? terminationStatus, string? statusLabel)
    {
        if (entry.RunId is null || !Enabled)
        {
            return;
        }
        if (!_queue.Writer.TryWrite(new PortReport(entry.RunId, entry.DeliveryId, message, terminationStatus, statusLabel)))
        {
            metrics.PortReport("dropped");
            Log.Dropped(logger, entry.DeliveryId);
        }
    }

    private static partial class Log
    {
        [LoggerMessage(EventIds.ReportDropped, LogLevel.Warning, "Port report for {DeliveryId} dropped: the report queue is full")]
        public static partial void Dropped(ILogger logger, string deliveryId);
    }
}
