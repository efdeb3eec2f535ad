using PortAzure.Dispatcher.Diagnostics;

namespace PortAzure.Dispatcher.PortReporting;

/// <summary>Sends queued reports to Port with their own retries, apart from the delivery slots.</summary>
internal sealed partial class PortReportingService(
    PortReporter reporter,
    PortApiClient client,
    DispatcherMetrics metrics,
    TimeProvider timeProvider,
    ILogger<PortReportingService> logger) : BackgroundService
{
    private const int Senders = 4;
    private static readonly TimeSpan[] Backoff =
    [
        TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(2), TimeSpan.FromSeconds(5), TimeSpan.FromSeconds(15),
        TimeSpan.FromSeconds(30), TimeSpan.FromSeconds(60), TimeSpan.FromSeconds(120),
    ];

    protected override Task ExecuteAsync(CancellationToken stoppingToken) =>
        Task.WhenAll(Enumerable.Range(0, Senders).Select(_ => SendLoopAsync(stoppingToken)));

    private async Task SendLoopAsync(CancellationToken stoppingToken)
    {
        try
        {
            await foreach (var report in reporter.Reader.ReadAllAsync(stoppingToken))
            {
                await SendAsync(report, stoppingToken);
            }
        }
        catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
        {
        }
    }

    private async Task SendAsync(PortReport report, CancellationToken stoppingToken)
    {
        for (var attempt = 0; ; attempt++)
        {
            PortCallResult result;
            try
            {
                result = await client.SendLogAsync(report, stoppingToken);
            }
            catch (Exception ex) when (!stoppingToken.IsCancellationRequested)
            {
                // Any failure (network, a malformed answer) is this report's problem only: retried,
                // never allowed to end the sender loop.
                Log.CallFailed(logger, ex, report.DeliveryId);
                result = PortCallResult.RetryLater;
            }
            if (result == PortCallResult.Sent)
            {
                metrics.PortReport("sent");
                Log.Sent(logger, report.DeliveryId, report.RunId);
                return;
            }
            if (result == PortCallResult.Rejected || attempt >= Backoff.Length)
            {
                metrics.PortReport("failed");
                Log.Failed(logger, report.DeliveryId, report.RunId, attempt + 1);
                return;
            }
            await Task.Delay(Backoff[attempt], timeProvider, stoppingToken);
        }
    }

    private static partial class Log
    {
        [LoggerMessage(EventIds.ReportSent, LogLevel.Debug, "Reported delivery {DeliveryId} to Port run {RunId}")]
        public static partial void Sent(ILogger logger, string deliveryId, string runId);

        [LoggerMessage(EventIds.ReportCallFailed, LogLevel.Debug, "A call to Port's API for delivery {DeliveryId} failed")]
        public static partial void CallFailed(ILogger logger, Exception exception, string deliveryId);

        [LoggerMessage(EventIds.ReportFailed, LogLevel.Warning, "Could not report delivery {DeliveryId} to Port run {RunId} after {Attempts} attempts")]
        public static partial void Failed(ILogger logger, string deliveryId, string runId, int attempts);
    }
}
