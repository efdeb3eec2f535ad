using System.Net;
using System.Net.Http.Json;
using System.Text.Json.Serialization;
using Microsoft.Extensions.Options;
using PortAzure.Security;

namespace PortAzure.Dispatcher.PortReporting;

/// <summary>What one call to Port's API came to.</summary>
internal enum PortCallResult
{
    Sent,
    RetryLater,
    Rejected,
}

/// <summary>Port's REST API: an access token cached until shortly before it expires, and run log lines.</summary>
internal sealed class PortApiClient(IHttpClientFactory httpClientFactory, IOptionsMonitor<PortOptions> options, TimeProvider timeProvider) : IDisposable
{
    public const string HttpClientName = "port-api";
    private static readonly TimeSpan RefreshMargin = TimeSpan.FromSeconds(60);
    private readonly SemaphoreSlim _tokenLock = new(1, 1);
    private string? _token;
    private DateTimeOffset _tokenExpires;

    public async Task<PortCallResult> SendLogAsync(PortReport report, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(report);
        var token = await GetTokenAsync(cancellationToken);
        if (token is null)
        {
            return PortCallResult.RetryLater;
        }
        var uri = new Uri(options.CurrentValue.ApiBaseUrl, $"/v1/actions/runs/{Uri.EscapeDataString(report.RunId)}/logs");
        using var request = new HttpRequestMessage(HttpMethod.Post, uri)
        {
            Content = JsonContent.Create(new LogLine(report.Message, report.TerminationStatus, report.StatusLabel)),
        };
        request.Headers.Authorization = new("Bearer", token);
        using var response = await httpClientFactory.CreateClient(HttpClientName).SendAsync(request, cancellationToken);
        if (response.IsSuccessStatusCode)
        {
            return PortCallResult.Sent;
        }
        if (response.StatusCode == HttpStatusCode.Unauthorized)
        {
            _token = null;
            return PortCallResult.RetryLater;
        }
        var code = (int)response.StatusCode;
        return code is 408 or 429 or >= 500 ? PortCallResult.RetryLater : PortCallResult.Rejected;
    }

    private async Task<string?> GetTokenAsync(CancellationToken cancellationToken)
    {
        if (_token is { } cached && timeProvider.GetUtcNow() < _tokenExpires)
        {
            return cached;
        }
        await _tokenLock.WaitAsync(cancellationToken);
        try
        {
            if (_token is { } again && timeProvider.GetUtcNow() < _tokenExpires)
            {
                return again;
            }
            var port = options.CurrentValue;
            using var response = await httpClientFactory.CreateClient(HttpClientName).PostAsJsonAsync(new Uri(port.ApiBaseUrl, "/v1/auth/access_token"),
                new TokenRequest(port.ClientId ?? "", port.ClientSecret ?? ""), cancellationToken);
            if (!response.IsSuccessStatusCode)
            {
                return null;
            }
            var token = await response.Content.ReadFromJsonAsync<TokenResponse>(cancellationToken);
            if (token?.AccessToken is not { Length: > 0 } accessToken)
            {
                return null;
            }
            var lifetime = TimeSpan.FromSeconds(token.ExpiresIn);
            var margin = lifetime > RefreshMargin * 2 ? RefreshMargin : lifetime / 2;
            _token = accessToken;
            _tokenExpires = timeProvider.GetUtcNow() + lifetime - margin;
            return accessToken;
        }
        finally
        {
            _tokenLock.Release();
        }
    }

    public void Dispose() => _tokenLock.Dispose();

    private sealed record TokenRequest([property: JsonPropertyName("clientId")] string ClientId, [property: JsonPropertyName("clientSecret")] string ClientSecret);

    private sealed record TokenResponse(
        [property: JsonPropertyName("accessToken")] string? AccessToken,
        [property: JsonPropertyName("expiresIn")] long ExpiresIn);

    private sealed record LogLine(
        [property: JsonPropertyName("message")] string Message,
        [property: JsonPropertyName("terminationStatus"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] string? TerminationStatus,
        [property: JsonPropertyName("statusLabel"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] string? StatusLabel);
}
