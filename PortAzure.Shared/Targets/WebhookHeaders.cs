namespace PortAzure.Targets;

/// <summary>
/// The headers the Dispatcher sets on every POST to Azure beside the signature; the signature header may not name them
/// (<see cref="AzureDevOpsOptionsValidator"/>), or it would be overwritten or sent twice.
/// </summary>
public static class WebhookHeaders
{
    /// <summary>The delivery id: the same on every try of one delivery, and on its replays (which keep the delivery id).</summary>
    public const string IdempotencyKey = "Idempotency-Key";

    /// <summary>Port's run id, when the call carried one.</summary>
    public const string RunId = "X-Port-Run-Id";
}
