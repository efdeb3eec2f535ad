namespace PortAzure.AzureDevOpsEmulator.Port;

/// <summary>A Port API answer: a status and a JSON body (<c>{"ok":false,"error","message"}</c> on failure).</summary>
internal sealed record PortAnswer(int Status, object Body, string? ErrorCode = null, int? RetryAfterSeconds = null)
{
    public static PortAnswer Ok(int status, object body) => new(status, body);

    public static PortAnswer Failure(int status, string error, string message) =>
        new(status, new { ok = false, error, message }, error);
}
