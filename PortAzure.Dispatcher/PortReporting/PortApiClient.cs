using System.Globalization;
using System.Net;
using System.Net.Http.Headers;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;
using Microsoft.Extensions.Options;
using PortAzure.Dispatcher.Diagnostics;
using PortAzure.Security;
using PortAzure.Time;

namespace PortAzure.Dispatcher.PortReporting;

/// <summary>What one call to Port's API came to.</summary>
internal enum PortCallResult
{
    Sent,
    RetryLater,
    Rejected,

    /// <summary>Port refused the relay's own credentials: nothing is wrong with the report.</summary>
    CredentialsRefused,

    /// <summary>Port is rate-limiting the relay (429): every report waits until <see cref="PortApiClient.ThrottledUntil"/>.</summary>
    Throttled,

    /// <summary>A final status refused (409/422) because the run has one already: perhaps this report's own earlier try.</summary>
    AlreadyEnded,

    /// <summary>No call made: a token call failed moments ago (<see cref="PortApiClient.TokenFailurePause"/>).</summary>
    NotTried,
}

/// <summary>Port's REST API: an access token cached until shortly before it expires, and run log lines.</summary>
internal sealed partial class PortApiClient(
    IHttpClientFactory httpClientFactory,
    IOptionsMonitor<PortOptions> options,
    TimeProvider timeProvider,
    ILogger<PortApiClient> logger) : IDisposable
{
    public const string HttpClientName = "port-api";
    private static readonly TimeSpan RefreshMargin = TimeSpan.FromSeconds(60);
    private const long MinTokenLifetimeSeconds = 60;
    private const long MaxTokenLifetimeSeconds = 24 * 3600;

    // After a refusal the token endpoint is left alone for a while: every waiting report would otherwise ask again.
    private static readonly TimeSpan RefusalPause = TimeSpan.FromSeconds(30);

    // After a failed token call (an error, a timeout) the sends queued behind it do not each wait out their own: while
    // Port's token endpoint times out, that queue is what made a try take minutes.
    internal static readonly TimeSpan TokenFailurePause = TimeSpan.FromSeconds(5);

    // A 429 without Retry-After waits this long; a Retry-After beyond the cap is taken as the cap.
    private static readonly TimeSpan DefaultThrottle = TimeSpan.FromSeconds(10);
    internal static readonly TimeSpan MaxThrottle = TimeSpan.FromMinutes(5);

    // Enough of a 409/422 to find "run locked" in Port's error; its status alone decides any other answer.
    private const int LockedAnswerBytes = 8 * 1024;
    internal static readonly TimeSpan LockedAnswerReadTime = TimeSpan.FromSeconds(10);
    private readonly SemaphoreSlim _tokenLock = new(1, 1);
    private string? _token;
    private DateTimeOffset _tokenExpires;
    private DateTimeOffset _refusedUntil;
    private DateTimeOffset _tokenFailedUntil;
    private volatile bool _credentialsRefused;
    private long _throttledUntilTicks;
    private long _sentCount;

    /// <summary>True from a refusal of the credentials by Port's token endpoint until it next issues a token.</summary>
    public bool CredentialsRefused => _credentialsRefused;

    /// <summary>
    /// Until when Port asked the relay to hold its calls (its last 429's Retry-After). Shared by every report: each
    /// one spacing its own retries would keep every call going at a rate limit that wants fewer.
    /// </summary>
    public DateTimeOffset ThrottledUntil => new(Interlocked.Read(ref _throttledUntilTicks), TimeSpan.Zero);

    /// <summary>Whether Port asked the relay to hold its calls and the time it gave is not over.</summary>
    public bool Throttled => Pausing(ThrottledUntil, MaxThrottle);

    /// <summary>How many reports Port has taken from this client: one taken after a report's try shows Port is up.</summary>
    public long SentCount => Interlocked.Read(ref _sentCount);

    /// <summary>Whether Port fails every report tried; ended here when it takes one.</summary>
    public PortOutage Outage { get; } = new(timeProvider);

    public async Task<PortCallResult> SendLogAsync(PortReport report, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(report);
        if (PortApiPaths.IsDotSegment(report.RunId))
        {
            // The Ingress refuses such run ids since 2026-11-27; one queued before that can still come here.
            return PortCallResult.Rejected;
        }
        if (Throttled)
        {
            return PortCallResult.Throttled;
        }
        var (token, refused, paused) = await GetTokenAsync(cancellationToken);
        if (token is null)
        {
            return refused ? PortCallResult.CredentialsRefused
                : Throttled ? PortCallResult.Throttled
                : paused ? PortCallResult.NotTried
                : PortCallResult.RetryLater;
        }
        var uri = new Uri(options.CurrentValue.ApiBaseUrl, $"/v1/actions/runs/{Uri.EscapeDataString(report.RunId)}/logs");
        using var request = new HttpRequestMessage(HttpMethod.Post, uri)
        {
            Content = JsonContent.Create(new LogLine(report.Message, report.TerminationStatus, report.StatusLabel)),
        };
        request.Headers.Authorization = new("Bearer", token);
        // The status decides, not the body: a 2xx whose body could not be read (over the buffer's cap, a connection cut
        // after the headers) was a failed try, and Port got the same line again at every retry.
        using var response = await httpClientFactory.CreateClient(HttpClientName).SendAsync(request, HttpCompletionOption.ResponseHeadersRead,
            cancellationToken);
        if (response.IsSuccessStatusCode)
        {
            Interlocked.Increment(ref _sentCount);
            if (Outage.Ended() is { } lasted)
            {
                Log.PortAnswersAgain(logger, lasted.TotalMinutes);
            }
            return PortCallResult.Sent;
        }
        if (response.StatusCode == HttpStatusCode.Unauthorized)
        {
            // Only this token is stale: another send may already have fetched the next one.
            Interlocked.CompareExchange(ref _token, null, token);
            return PortCallResult.RetryLater;
        }
        if (response.StatusCode == HttpStatusCode.TooManyRequests)
        {
            Throttle(response.Headers.RetryAfter);
            return PortCallResult.Throttled;
        }
        // 403: the relay's credentials may lack a permission (every report) or this run may be out of their reach (this
        // one): retried, and the caller tells the two apart by whether Port takes the other reports.
        var code = (int)response.StatusCode;
        if (report.TerminationStatus is not null && code is 409 or 422)
        {
            switch (await SaysRunIsLockedAsync(response, cancellationToken))
            {
                case true:
                    // Port locks a run once its status is set. A try whose answer was lost (a timeout, a proxy's 5xx) may have
                    // set it: this is then the report arriving twice, not failing. (422 alone is also Port's answer to a body
                    // that does not match its schema: a report refused for that is rejected.)
                    return PortCallResult.AlreadyEnded;
                case null:
                    // Which of the two it is cannot be told: tried again, not given up.
                    Log.LogCallAnswered(logger, LogLevel.Debug, report.RunId, code, "", "kept for later (its body could not be read)");
                    return PortCallResult.RetryLater;
            }
        }
        // A 3xx (redirects are not followed) says the relay's Port:ApiBaseUrl is wrong, not the report: kept until it is fixed.
        var result = code is (>= 300 and < 400) or 403 or 408 or >= 500 ? PortCallResult.RetryLater : PortCallResult.Rejected;
        // The give-up line (2202) and the outage Warning (2213) do not carry Port's answer; this does.
        var location = response.Headers.Location?.ToString() ?? "";
        if (result == PortCallResult.Rejected)
        {
            Log.LogCallAnswered(logger, LogLevel.Information, report.RunId, code, location, "given up");
        }
        else
        {
            Log.LogCallAnswered(logger, LogLevel.Debug, report.RunId, code, location, "kept for later");
        }
        return result;
    }

    /// <returns>Null when the answer's body could not be read (cut off, or stalled past <see cref="LockedAnswerReadTime"/>).</returns>
    private async Task<bool?> SaysRunIsLockedAsync(HttpResponseMessage response, CancellationToken cancellationToken)
    {
        string text;
        // The client's timeout ends with the headers; a body that stalls must not hold the call's slot.
        using var reading = new CancellationTokenSource(LockedAnswerReadTime, timeProvider);
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, reading.Token);
        try
        {
            await using var body = await response.Content.ReadAsStreamAsync(linked.Token);
            var buffer = new byte[LockedAnswerBytes];
            var length = 0;
            int read;
            while (length < buffer.Length && (read = await body.ReadAsync(buffer.AsMemory(length), linked.Token)) > 0)
            {
                length += read;
            }
            text = Encoding.UTF8.GetString(buffer, 0, length);
        }
        catch (Exception ex) when (ex is HttpRequestException or IOException
            || (ex is OperationCanceledException && !cancellationToken.IsCancellationRequested))
        {
            return null;
        }
        // Words, not fragments: a schema error naming terminationStatus, or "blocked", must not match.
        return RunLockedPattern().IsMatch(text);
    }

    private bool Pausing(DateTimeOffset until, TimeSpan longest) => WallClockPause.Runs(until, timeProvider.GetUtcNow(), longest);

    private void Throttle(RetryConditionHeaderValue? retryAfter)
    {
        var now = timeProvider.GetUtcNow();
        var wait = retryAfter switch
        {
            { Delta: { } delta } => delta,
            { Date: { } date } => date - now,
            _ => DefaultThrottle,
        };
        wait = wait < TimeSpan.FromSeconds(1) ? TimeSpan.FromSeconds(1) : wait > MaxThrottle ? MaxThrottle : wait;
        var until = (now + wait).UtcTicks;
        var previous = Interlocked.Read(ref _throttledUntilTicks);
        // Several sends may be answered 429 at once: the latest end wins, and only the first one in a window logs. An end
        // further away than the longest throttle was set before the clock was stepped back: it is replaced, not kept.
        while (until > previous || previous - now.UtcTicks > MaxThrottle.Ticks)
        {
            var seen = Interlocked.CompareExchange(ref _throttledUntilTicks, until, previous);
            if (seen == previous)
            {
                if (previous <= now.UtcTicks || previous - now.UtcTicks > MaxThrottle.Ticks)
                {
                    Log.Throttled(logger, wait.TotalSeconds);
                }
                return;
            }
            previous = seen;
        }
    }

    /// <returns>
    /// The token, or null and whether Port refused the credentials (rather than failed to answer), or whether no call was
    /// made because one failed moments ago (<see cref="TokenFailurePause"/>).
    /// </returns>
    private async Task<(string? Token, bool Refused, bool Paused)> GetTokenAsync(CancellationToken cancellationToken)
    {
        if (_token is { } cached && timeProvider.GetUtcNow() < _tokenExpires)
        {
            return (cached, false, false);
        }
        await _tokenLock.WaitAsync(cancellationToken);
        try
        {
            if (_token is { } again && timeProvider.GetUtcNow() < _tokenExpires)
            {
                return (again, false, false);
            }
            if (Pausing(_refusedUntil, RefusalPause))
            {
                return (null, true, false);
            }
            var failedMomentsAgo = Pausing(_tokenFailedUntil, TokenFailurePause);
            if (Throttled || failedMomentsAgo)
            {
                // Sends that queued on the lock behind a throttled or failed token call do not call again.
                return (null, false, failedMomentsAgo);
            }
            var port = options.CurrentValue;
            HttpResponseMessage response;
            try
            {
                response = await httpClientFactory.CreateClient(HttpClientName).PostAsJsonAsync(new Uri(port.ApiBaseUrl, "/v1/auth/access_token"),
                    new TokenRequest(port.ClientId ?? "", port.ClientSecret ?? ""), cancellationToken);
            }
            catch (Exception ex) when (ex is HttpRequestException or TaskCanceledException && !cancellationToken.IsCancellationRequested)
            {
                _tokenFailedUntil = timeProvider.GetUtcNow() + TokenFailurePause;
                throw;
            }
            using var answer = response;
            if (response.StatusCode is HttpStatusCode.Unauthorized or HttpStatusCode.Forbidden)
            {
                _refusedUntil = timeProvider.GetUtcNow() + RefusalPause;
                _credentialsRefused = true;
                Log.CredentialsRefused(logger, (int)response.StatusCode, port.ClientId ?? "");
                return (null, true, false);
            }
            if (response.StatusCode == HttpStatusCode.TooManyRequests)
            {
                Throttle(response.Headers.RetryAfter);
                return (null, false, false);
            }
            if (!response.IsSuccessStatusCode)
            {
                return AnsweredWithoutToken(response.StatusCode, "an error");
            }
            TokenResponse? token;
            try
            {
                token = await response.Content.ReadFromJsonAsync<TokenResponse>(cancellationToken);
            }
            catch (Exception ex) when (ex is JsonException or NotSupportedException && !cancellationToken.IsCancellationRequested)
            {
                // A 200 that is not a token (a proxy's page) is a failed token call too. Not thrown on: the parser's message
                // quotes the body, which may hold a token.
                return AnsweredWithoutToken(response.StatusCode, "a body that is not a token");
            }
            catch (HttpRequestException) when (!cancellationToken.IsCancellationRequested)
            {
                // A cut-off body.
                _tokenFailedUntil = timeProvider.GetUtcNow() + TokenFailurePause;
                throw;
            }
            // A token that cannot go in a header (a line break, a non-ASCII character) failed every send inside this client,
            // and stayed cached for its whole lifetime (up to a day): reports stopped with nothing asking Port again.
            if (token?.AccessToken is not { Length: > 0 } accessToken || accessToken.AsSpan().ContainsAnyExceptInRange('!', '~'))
            {
                return AnsweredWithoutToken(response.StatusCode, "no usable token");
            }
            // Port's own value, bounded: a huge one threw here (before any pause was set), one of 0 cached nothing.
            var lifetime = TimeSpan.FromSeconds(LifetimeSeconds(token.ExpiresIn));
            var margin = lifetime > RefreshMargin * 2 ? RefreshMargin : lifetime / 2;
            _token = accessToken;
            _tokenExpires = timeProvider.GetUtcNow() + lifetime - margin;
            _credentialsRefused = false;
            return (accessToken, false, false);
        }
        finally
        {
            _tokenLock.Release();
        }
    }

    /// <summary>A token call Port answered without a usable token: no token call for <see cref="TokenFailurePause"/>.</summary>
    private (string? Token, bool Refused, bool Paused) AnsweredWithoutToken(HttpStatusCode status, string what)
    {
        _tokenFailedUntil = timeProvider.GetUtcNow() + TokenFailurePause;
        // Debug: at most one per pause, and Warning 2213 says so after 5 min; this says why, when asked for.
        Log.TokenCallFailed(logger, (int)status, what);
        return (null, false, false);
    }

    public void Dispose() => _tokenLock.Dispose();

    /// <summary>
    /// Port's <c>expiresIn</c>, bounded. Read loosely: a value past a 64-bit number, a fraction or a numeric string failed
    /// the whole token answer, and every token call after it while Port sent it. One that is not a number at all gives the
    /// shortest lifetime.
    /// </summary>
    private static long LifetimeSeconds(JsonElement? expiresIn)
    {
        double? seconds = expiresIn switch
        {
            { ValueKind: JsonValueKind.Number } number when number.TryGetDouble(out var n) => n,
            { ValueKind: JsonValueKind.String } text when double.TryParse(text.GetString(), NumberStyles.Float, CultureInfo.InvariantCulture, out var n) => n,
            _ => null,
        };
        return seconds is { } s && double.IsFinite(s) ? (long)Math.Clamp(s, MinTokenLifetimeSeconds, MaxTokenLifetimeSeconds) : MinTokenLifetimeSeconds;
    }

    [System.Text.RegularExpressions.GeneratedRegex(@"\b(run_locked|locked|already (been )?terminated)\b",
        System.Text.RegularExpressions.RegexOptions.IgnoreCase | System.Text.RegularExpressions.RegexOptions.CultureInvariant)]
    private static partial System.Text.RegularExpressions.Regex RunLockedPattern();

    private static partial class Log
    {
        [LoggerMessage(EventIds.PortCredentialsRefused, LogLevel.Warning,
            "Port refused the relay's API credentials (HTTP {Status}, client id {ClientId}); reports wait until it accepts them")]
        public static partial void CredentialsRefused(ILogger logger, int status, string clientId);

        [LoggerMessage(EventIds.PortTokenCallFailed, LogLevel.Debug,
            "Port's token endpoint answered HTTP {Status} with {What}; no token call for the next 5 s, the reports behind it wait")]
        public static partial void TokenCallFailed(ILogger logger, int status, string what);

        [LoggerMessage(EventId = EventIds.PortLogCallAnswered,
            Message = "Port answered HTTP {Status} to the log line for run {RunId} (Location: {Location}); the report is {Outcome}")]
        public static partial void LogCallAnswered(ILogger logger, LogLevel level, string runId, int status, string location, string outcome);

        [LoggerMessage(EventIds.PortAnswersAgain, LogLevel.Information, "Port's API took a report again after failing every report tried for {Minutes:F1} min")]
        public static partial void PortAnswersAgain(ILogger logger, double minutes);

        [LoggerMessage(EventIds.PortThrottled, LogLevel.Warning,
            "Port is rate-limiting the relay's reports (HTTP 429); every report waits {Seconds} s, without spending its attempts")]
        public static partial void Throttled(ILogger logger, double seconds);
    }

    private sealed record TokenRequest([property: JsonPropertyName("clientId")] string ClientId, [property: JsonPropertyName("clientSecret")] string ClientSecret);

    private sealed record TokenResponse(
        [property: JsonPropertyName("accessToken")] string? AccessToken,
        [property: JsonPropertyName("expiresIn")] JsonElement? ExpiresIn);

    private sealed record LogLine(
        [property: JsonPropertyName("message")] string Message,
        [property: JsonPropertyName("terminationStatus"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] string? TerminationStatus,
        [property: JsonPropertyName("statusLabel"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] string? StatusLabel);
}
