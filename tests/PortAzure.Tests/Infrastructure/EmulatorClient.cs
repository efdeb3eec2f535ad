using System.Net.Http.Json;
using System.Text.Json;
using System.Text.Json.Serialization;

namespace PortAzure.Tests.Infrastructure;

/// <summary>The emulator's control endpoints.</summary>
public sealed class EmulatorClient(HttpClient client)
{
    private static readonly JsonSerializerOptions Json = new(JsonSerializerDefaults.Web);

    public async Task<IReadOnlyList<RecordedRequest>> RequestsAsync(string? webhook = null) =>
        (await client.GetFromJsonAsync<List<RecordedRequest>>("_emulator/requests" + (webhook is null ? "" : $"?webhook={webhook}"), Json))!;

    public async Task<IReadOnlyList<RecordedRequest>> DeliveredAsync() =>
        (await RequestsAsync()).Where(r => r.StatusCode is >= 200 and < 300).ToList();

    public async Task ScriptAsync(object behavior)
    {
        using var response = await client.PostAsJsonAsync("_emulator/behavior", behavior, Json);
        response.EnsureSuccessStatusCode();
    }

    public async Task<IReadOnlyList<PortCall>> PortCallsAsync() =>
        (await client.GetFromJsonAsync<List<PortCall>>("_emulator/port/calls", Json))!;

    public async Task PortBehaviorAsync(object behavior)
    {
        using var response = await client.PostAsJsonAsync("_emulator/port/behavior", behavior, Json);
        response.EnsureSuccessStatusCode();
    }
}

public sealed record RecordedRequest(
    long Sequence,
    DateTimeOffset ReceivedAt,
    string Method,
    string Path,
    string QueryString,
    string Organization,
    string Webhook,
    Dictionary<string, string[]> Headers,
    string BodyBase64,
    string BodyText,
    int StatusCode,
    bool SignatureValid,
    string Outcome)
{
    [JsonIgnore]
    public byte[] Body => Convert.FromBase64String(BodyBase64);

    public string? Header(string name) =>
        Headers.FirstOrDefault(h => string.Equals(h.Key, name, StringComparison.OrdinalIgnoreCase)).Value?.FirstOrDefault();
}

public sealed record PortCall(long Sequence, DateTimeOffset ReceivedAt, string Method, string Path, string? RunId, string? BodyText,
    bool AuthorizationPresent, int StatusCode, string? Error);
