namespace PortAzure.AzureDevOpsEmulator.Webhooks;

/// <summary>One request received on the webhook route, as <c>GET /_emulator/requests</c> shows it.</summary>
/// <param name="Sequence">Arrival number (taken once the body is read), starting at 1; never reset, not even by a clear.</param>
/// <param name="QueryString">The raw query string including the leading <c>?</c>, or empty.</param>
/// <param name="Outcome">
/// <c>ok</c>, <c>scripted</c>, <c>random_failure</c>, or the rejection reason
/// (<c>method_not_allowed</c>, <c>api_version_missing</c>, <c>signature_missing</c>, <c>signature_mismatch</c>).
/// </param>
internal sealed record RecordedWebhookRequest(
    long Sequence,
    DateTimeOffset ReceivedAt,
    string Method,
    string Path,
    string QueryString,
    string Organization,
    string Webhook,
    IReadOnlyDictionary<string, string?[]> Headers,
    string BodyBase64,
    string BodyText,
    int StatusCode,
    bool SignatureValid,
    string Outcome);
