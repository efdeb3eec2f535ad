namespace PortAzure.AzureDevOpsEmulator;

/// <summary>Configuration section <c>Emulator</c>.</summary>
internal sealed class EmulatorOptions
{
    public const string SectionName = "Emulator";

    /// <summary>The HMAC-SHA1 secret of every webhook that has no entry in <see cref="WebhookSecrets"/>.</summary>
    public string Secret { get; set; } = "port-demo-secret";

    /// <summary>The request header carrying the signature.</summary>
    public string SignatureHeader { get; set; } = "X-Port-Signature";

    /// <summary>Webhook name to secret; overrides <see cref="Secret"/> for that webhook.</summary>
    public Dictionary<string, string> WebhookSecrets { get; } = new(StringComparer.OrdinalIgnoreCase);

    /// <summary>Section <c>Emulator:Port</c>.</summary>
    public PortApiOptions Port { get; } = new();

    /// <summary>
    /// The newest this many webhook requests, and as many Port API calls, are kept for <c>/_emulator</c>; older ones are
    /// dropped (counted as <c>dropped</c> by <c>GET /_emulator/requests/count</c>). 0 keeps all: the benchmark's verdicts
    /// need every request.
    /// </summary>
    public int MaxRecorded { get; set; } = 10_000;

    public string SecretFor(string webhook) =>
        WebhookSecrets.TryGetValue(webhook, out var secret) ? secret : Secret;
}

/// <summary>Configuration section <c>Emulator:Port</c>.</summary>
internal sealed class PortApiOptions
{
    /// <summary>When set (with <see cref="ClientSecret"/>), only these credentials get a token.</summary>
    public string? ClientId { get; set; }

    public string? ClientSecret { get; set; }

    public int TokenLifetimeSeconds { get; set; } = 3600;
}
