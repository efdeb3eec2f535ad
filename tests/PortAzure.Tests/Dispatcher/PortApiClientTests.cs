using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Options;
using Microsoft.Extensions.Time.Testing;
using PortAzure.Dispatcher;
using PortAzure.Dispatcher.PortReporting;
using PortAzure.Security;
using PortAzure.Tests.Infrastructure;

namespace PortAzure.Tests.Dispatcher;

/// <summary>
/// The client's token handling and its pauses (after a refusal, a failed token call, a 429), also on a wall clock stepped
/// back by an hour, as NTP or an operator may do: each pause ends after its own length, not after the step.
/// </summary>
public sealed class PortApiClientTests : IAsyncLifetime
{
    private readonly SteppedClock _clock = new();
    private TestHost _emulator = null!;
    private EmulatorClient _emulatorApi = null!;
    private ServiceProvider _services = null!;
    private PortApiClient _client = null!;

    public async Task InitializeAsync()
    {
        _emulator = await TestHost.StartEmulatorAsync(new Dictionary<string, string?> { ["Emulator:Secret"] = TestRuns.Secret });
        _emulatorApi = new EmulatorClient(_emulator.Client);
        var services = new ServiceCollection();
        services.AddLogging(l => l.SetMinimumLevel(LogLevel.Warning));
        services.AddPortApiHttpClient();
        services.AddOptions<PortOptions>().Configure(o =>
        {
            o.ApiBaseUrl = _emulator.BaseAddress;
            o.ClientId = "relay-client";
            o.ClientSecret = TestRuns.Secret;
        });
        services.AddSingleton<TimeProvider>(_clock);
        services.AddSingleton<PortApiClient>();
        _services = services.BuildServiceProvider();
        _client = _services.GetRequiredService<PortApiClient>();
    }

    public async Task DisposeAsync()
    {
        await _services.DisposeAsync();
        await _emulator.DisposeAsync();
    }

    [Fact]
    public async Task SendLogAsync_TokenCallFailedThenClockSteppedBack_CallsAgainInsteadOfPausingForTheStep()
    {
        await _emulatorApi.PortBehaviorAsync(new { failNext = 2, status = 503 });
        Assert.Equal(PortCallResult.RetryLater, await SendAsync());
        Assert.Equal(PortCallResult.NotTried, await SendAsync());

        _clock.StepBack(TimeSpan.FromHours(1));

        Assert.Equal(PortCallResult.RetryLater, await SendAsync());
        Assert.Equal(2, (await _emulatorApi.PortCallsAsync()).Count);
        _clock.Advance(PortApiClient.TokenFailurePause);
        Assert.Equal(PortCallResult.Sent, await SendAsync());
    }

    [Fact]
    public async Task SendLogAsync_CredentialsRefusedThenClockSteppedBack_AsksAgainAfterTheRefusalPauseNotTheStep()
    {
        await _emulatorApi.PortBehaviorAsync(new { failNext = 1, status = 401 });
        Assert.Equal(PortCallResult.CredentialsRefused, await SendAsync());
        Assert.Equal(PortCallResult.CredentialsRefused, await SendAsync());
        Assert.Single(await _emulatorApi.PortCallsAsync());

        _clock.StepBack(TimeSpan.FromHours(1));

        Assert.Equal(PortCallResult.Sent, await SendAsync());
        Assert.False(_client.CredentialsRefused);
    }

    [Fact]
    public async Task SendLogAsync_ThrottledThenClockSteppedBack_CallsAgainAndHonoursTheNextRetryAfter()
    {
        await _emulatorApi.PortBehaviorAsync(new { failNext = 2, status = 429, retryAfterSeconds = 60 });
        Assert.Equal(PortCallResult.Throttled, await SendAsync());
        Assert.Equal(PortCallResult.Throttled, await SendAsync());
        Assert.Single(await _emulatorApi.PortCallsAsync());

        _clock.StepBack(TimeSpan.FromHours(1));

        // Not held for the hour: it calls, and the 429 it gets sets a new end, 60 s from the new now.
        Assert.False(_client.Throttled);
        Assert.Equal(PortCallResult.Throttled, await SendAsync());
        Assert.True(_client.Throttled);
        Assert.Equal(_clock.GetUtcNow() + TimeSpan.FromSeconds(60), _client.ThrottledUntil);
        _clock.Advance(TimeSpan.FromSeconds(61));
        Assert.Equal(PortCallResult.Sent, await SendAsync());
    }

    [Theory]
    [InlineData(403, "RetryLater")] // the credentials lack a permission: the relay's to mend, not the report's fault
    [InlineData(408, "RetryLater")]
    [InlineData(500, "RetryLater")]
    [InlineData(429, "Throttled")]
    [InlineData(400, "Rejected")]
    [InlineData(422, "Rejected")]
    public async Task SendLogAsync_LogCallAnsweredWithAnError_IsRetriedOrGivenUpAsTheReadmeSays(int status, string expected)
    {
        Assert.Equal(PortCallResult.Sent, await SendAsync());
        await _emulatorApi.PortBehaviorAsync(new { failNext = 1, status });

        Assert.Equal(Enum.Parse<PortCallResult>(expected), await SendAsync());
        Assert.False(_client.CredentialsRefused);
    }

    [Theory]
    [InlineData(401)]
    [InlineData(403)]
    public async Task SendLogAsync_TokenCallRefused_IsCredentialsRefused(int status)
    {
        await _emulatorApi.PortBehaviorAsync(new { failNext = 1, status });

        Assert.Equal(PortCallResult.CredentialsRefused, await SendAsync());
        Assert.True(_client.CredentialsRefused);
    }

    [Fact]
    public async Task SendLogAsync_LogCallRefusedWith401_FetchesANewTokenForTheNextSend()
    {
        Assert.Equal(PortCallResult.Sent, await SendAsync());
        await _emulatorApi.PortBehaviorAsync(new { failNext = 1, status = 401 });

        // Port refused the token on a log call (revoked, or expired early): not the credentials' fault, and not the report's.
        Assert.Equal(PortCallResult.RetryLater, await SendAsync());
        Assert.False(_client.CredentialsRefused);
        Assert.Equal(PortCallResult.Sent, await SendAsync());

        var calls = await _emulatorApi.PortCallsAsync();
        Assert.Equal(2, calls.Count(c => c.Path == "/v1/auth/access_token"));
    }

    [Theory]
    [InlineData("text/html", "<html><body>Sign in to the corporate proxy</body></html>")]
    [InlineData("application/json", """{"accessToken":"","expiresIn":3600}""")]
    [InlineData("application/json", """{"ok":true}""")]
    [InlineData("application/json", """{"accessToken":"T\nX-Evil: 1","expiresIn":86400}""")]
    [InlineData("application/json", """{"accessToken":"t\u00f6ken","expiresIn":86400}""")]
    public async Task SendLogAsync_TokenCallAnswered200WithoutAUsableToken_PausesTheSendsBehindIt(string mediaType, string tokenBody)
    {
        // A proxy's page or an empty token is a failed token call: the sends behind it must not each ask again. A token that
        // cannot go in a header was cached for its lifetime (a day), every send failing inside the client, none asking again.
        var tokenCalls = 0;
        await using var port = await StartPortAsync(async context =>
        {
            Interlocked.Increment(ref tokenCalls);
            context.Response.ContentType = mediaType;
            await context.Response.WriteAsync(tokenBody);
        });
        using var client = NewClient(port);

        // Not thrown: the parser's message, which the reporter would log, quotes the body.
        Assert.Equal(PortCallResult.RetryLater, await TrySendAsync(client));
        Assert.Equal(PortCallResult.NotTried, await TrySendAsync(client));
        Assert.Equal(1, Volatile.Read(ref tokenCalls));

        _clock.Advance(PortApiClient.TokenFailurePause);
        await TrySendAsync(client);
        Assert.Equal(2, Volatile.Read(ref tokenCalls));
    }

    [Fact]
    public async Task SendLogAsync_TokenCallRedirected_DoesNotFollowWithTheSecret()
    {
        var followed = 0;
        await using var port = await StartPortAsync(context =>
        {
            context.Response.StatusCode = StatusCodes.Status307TemporaryRedirect;
            context.Response.Headers.Location = "/elsewhere";
            return Task.CompletedTask;
        }, app => app.MapPost("/elsewhere", () => Interlocked.Increment(ref followed)));
        using var client = NewClient(port);

        Assert.Equal(PortCallResult.RetryLater, await TrySendAsync(client));
        Assert.Equal(0, Volatile.Read(ref followed));
    }

    [Fact]
    public async Task SendLogAsync_LogCallRedirected_IsKeptForLaterNotRejected()
    {
        await using var port = await StartPortAsync(WriteTokenAsync, app => app.MapPost("/v1/actions/runs/{runId}/logs",
            (HttpContext context) => Results.Redirect("https://port.example/v1/actions/runs/x/logs", permanent: true, preserveMethod: true)));
        using var client = NewClient(port);

        // The base URL is wrong (http for https, a moved host): the report must wait for the fix, not be given up.
        Assert.Equal(PortCallResult.RetryLater, await TrySendAsync(client));
    }

    [Fact]
    public async Task SendLogAsync_HugeErrorPage_IsNotReadPastTheCap()
    {
        await using var port = await StartPortAsync(WriteTokenAsync, app => app.MapPost("/v1/actions/runs/{runId}/logs", async (HttpContext context) =>
        {
            context.Response.StatusCode = StatusCodes.Status502BadGateway;
            context.Response.ContentType = "text/html";
            var page = new byte[64 * 1024];
            for (var i = 0; i < 160 && !context.RequestAborted.IsCancellationRequested; i++)
            {
                await context.Response.Body.WriteAsync(page, context.RequestAborted);
            }
        }));
        using var client = NewClient(port);

        // A proxy's 10 MB page: its status decides (kept for later), its body is not read.
        Assert.Equal(PortCallResult.RetryLater, await TrySendAsync(client));
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task SendLogAsync_LogCallAnswered2xxWithABodyThatCannotBeRead_IsSent(bool cutOff)
    {
        // Port took the line: a body past the buffer's cap, or a connection cut after the headers, failed the try, and the
        // reporter sent the same line again at every retry (five times in 40 s, then every two minutes for a day).
        var logCalls = 0;
        await using var port = await StartPortAsync(WriteTokenAsync, app => app.MapPost("/v1/actions/runs/{runId}/logs", async (HttpContext context) =>
        {
            Interlocked.Increment(ref logCalls);
            context.Response.StatusCode = StatusCodes.Status200OK;
            context.Response.ContentType = "application/json";
            if (cutOff)
            {
                context.Response.ContentLength = 1000;
                await context.Response.Body.WriteAsync("{\"ok\":"u8.ToArray(), context.RequestAborted);
                await context.Response.Body.FlushAsync(context.RequestAborted);
                // Kestrel's abort drops output not yet on the wire: the headers must reach the client first.
                await Task.Delay(500, context.RequestAborted);
                context.Abort();
                return;
            }
            var padding = new byte[100 * 1024];
            Array.Fill(padding, (byte)' ');
            await context.Response.Body.WriteAsync(padding, context.RequestAborted);
        }));
        using var client = NewClient(port);

        Assert.Equal(PortCallResult.Sent, await TrySendAsync(client));
        Assert.Equal(1, Volatile.Read(ref logCalls));
    }

    [Theory]
    [InlineData(true, "AlreadyEnded")]
    [InlineData(false, "RetryLater")]
    public async Task SendLogAsync_FinalReportAnswered409_RunLockedEndsItAndABodyCutOffKeepsIt(bool whole, string expected)
    {
        // A 409 says "run locked" (this report's own earlier try may have set the status) only in its body. One cut off was
        // thrown and retried before the body was read apart from the status; it must not now read as a refusal, given up.
        await using var port = await StartPortAsync(WriteTokenAsync, app => app.MapPost("/v1/actions/runs/{runId}/logs", async (HttpContext context) =>
        {
            context.Response.StatusCode = StatusCodes.Status409Conflict;
            context.Response.ContentType = "application/json";
            var body = """{"ok":false,"error":"run_locked","message":"The run is locked"}"""u8.ToArray();
            if (whole)
            {
                await context.Response.Body.WriteAsync(body, context.RequestAborted);
                return;
            }
            context.Response.ContentLength = body.Length;
            await context.Response.Body.WriteAsync(body.AsMemory(0, 5), context.RequestAborted);
            await context.Response.Body.FlushAsync(context.RequestAborted);
            // Kestrel's abort drops output not yet on the wire: the headers must reach the client first.
            await Task.Delay(500, context.RequestAborted);
            context.Abort();
        }));
        using var client = NewClient(port);

        Assert.Equal(Enum.Parse<PortCallResult>(expected),
            await client.SendLogAsync(new PortReport(TestRuns.NewRunId(), "d-1", "Dead-lettered", "FAILURE", null), CancellationToken.None));
    }

    [Theory]
    [InlineData("99999999999999999999")]
    [InlineData("3600.5")]
    [InlineData("\"3600\"")]
    [InlineData("\"soon\"")]
    [InlineData("null")]
    public async Task SendLogAsync_TokenLifetimeNotAWholeNumber_IsReadLooselyAndTheTokenUsed(string expiresIn)
    {
        // Past a 64-bit number, a fraction or a string failed the whole token answer, and every token call while Port sent it.
        var tokenCalls = 0;
        await using var port = await StartPortAsync(async context =>
        {
            Interlocked.Increment(ref tokenCalls);
            context.Response.ContentType = "application/json";
            await context.Response.WriteAsync($$"""{"accessToken":"token-1","expiresIn":{{expiresIn}}}""");
        }, app => app.MapPost("/v1/actions/runs/{runId}/logs", () => Results.Created()));
        using var client = NewClient(port);

        Assert.Equal(PortCallResult.Sent, await TrySendAsync(client));
        Assert.Equal(PortCallResult.Sent, await TrySendAsync(client));
        Assert.Equal(1, Volatile.Read(ref tokenCalls));
    }

    [Theory]
    [InlineData(1_000_000_000_000_000L)]
    [InlineData(0L)]
    public async Task SendLogAsync_TokenLifetimeOutOfRange_IsBoundedAndTheTokenUsed(long expiresIn)
    {
        var tokenCalls = 0;
        await using var port = await StartPortAsync(context =>
        {
            Interlocked.Increment(ref tokenCalls);
            return context.Response.WriteAsJsonAsync(new { accessToken = "token-1", expiresIn });
        }, app => app.MapPost("/v1/actions/runs/{runId}/logs", () => Results.Created()));
        using var client = NewClient(port);

        Assert.Equal(PortCallResult.Sent, await TrySendAsync(client));
        Assert.Equal(PortCallResult.Sent, await TrySendAsync(client));
        Assert.Equal(1, Volatile.Read(ref tokenCalls));
        // At most a day, whatever Port said.
        _clock.Advance(TimeSpan.FromDays(1));
        Assert.Equal(PortCallResult.Sent, await TrySendAsync(client));
        Assert.Equal(2, Volatile.Read(ref tokenCalls));
    }

    [Theory]
    [InlineData(1, false)]
    [InlineData(15, true)]
    public async Task SendLogAsync_PortAnswersAfter4s_GivesUpOnlyWhenTheConfiguredTimeoutIsShorter(double timeoutSeconds, bool sent)
    {
        // The first log call is answered at once: it fetches and caches the token, so that only the timed call's own time counts.
        var logCalls = 0;
        await using var port = await StartPortAsync(WriteTokenAsync, app => app.MapPost("/v1/actions/runs/{runId}/logs", async () =>
        {
            if (Interlocked.Increment(ref logCalls) > 1)
            {
                await Task.Delay(TimeSpan.FromSeconds(4));
            }
            return Results.Created();
        }));
        var services = new ServiceCollection();
        services.AddPortApiHttpClient();
        services.Configure<DispatcherOptions>(o => o.PortRequestTimeoutSeconds = timeoutSeconds);
        await using var provider = services.BuildServiceProvider();
        using var client = NewClient(port, provider.GetRequiredService<IHttpClientFactory>());
        Assert.Equal(PortCallResult.Sent, await client.SendLogAsync(new PortReport(TestRuns.NewRunId(), "d-0", "Delivered", null, null), CancellationToken.None));

        var send = client.SendLogAsync(new PortReport(TestRuns.NewRunId(), "d-1", "Delivered", null, null), CancellationToken.None);

        if (sent)
        {
            Assert.Equal(PortCallResult.Sent, await send);
        }
        else
        {
            // HttpClient's own timeout: the reporter counts it as a failed try, retried.
            var error = await Assert.ThrowsAsync<TaskCanceledException>(() => send);
            Assert.IsType<TimeoutException>(error.InnerException);
        }
        Assert.Equal(2, Volatile.Read(ref logCalls));
    }

    private static Task WriteTokenAsync(HttpContext context) =>
        context.Response.WriteAsJsonAsync(new { accessToken = "token-" + Guid.NewGuid().ToString("N"), expiresIn = 3600 });

    [Theory]
    [InlineData(".")]
    [InlineData("..")]
    public async Task SendLogAsync_RunIdIsADotSegment_IsRejectedWithoutACall(string runId)
    {
        // Escaped or not, the dot segment would be resolved: /v1/actions/runs/../logs is POST /v1/actions/logs.
        Assert.Equal(PortCallResult.Rejected, await _client.SendLogAsync(new PortReport(runId, "d-1", "Delivered", null, null), CancellationToken.None));

        Assert.Empty(await _emulatorApi.PortCallsAsync());
        Assert.Equal(PortCallResult.Sent, await SendAsync());
    }

    private Task<PortCallResult> SendAsync() =>
        _client.SendLogAsync(new PortReport(TestRuns.NewRunId(), "d-1", "Delivered", null, null), CancellationToken.None);

    /// <summary>A send through <paramref name="client"/>; null when it threw (a body that is not JSON), as the reporter sees it.</summary>
    private static async Task<PortCallResult?> TrySendAsync(PortApiClient client)
    {
        try
        {
            return await client.SendLogAsync(new PortReport(TestRuns.NewRunId(), "d-1", "Delivered", null, null), CancellationToken.None);
        }
        catch (System.Text.Json.JsonException)
        {
            return null;
        }
    }

    [Theory]
    [InlineData(404, null, "Information", "given up")]
    [InlineData(308, "https://api.us.port.io/v1/actions/runs/x/logs", "Debug", "kept for later")]
    public async Task SendLogAsync_LogCallNotTaken_LogsPortsStatusAndLocation(int status, string? location, string level, string outcome)
    {
        // The give-up Warning (2202) said "given up after 1 tries" for a deleted run and a conflict alike, and a redirect (the
        // base URL pointing at the wrong region) logged nothing at any level.
        await using var port = await StartPortAsync(WriteTokenAsync, app => app.MapPost("/v1/actions/runs/{runId}/logs", (HttpContext context) =>
        {
            context.Response.StatusCode = status;
            if (location is not null)
            {
                context.Response.Headers.Location = location;
            }
            return Task.CompletedTask;
        }));
        using var sink = new LogSink();
        using var loggers = LoggerFactory.Create(l => l.AddProvider(sink).SetMinimumLevel(LogLevel.Debug));
        using var client = NewClient(port, logger: loggers.CreateLogger<PortApiClient>());
        var runId = TestRuns.NewRunId();

        await client.SendLogAsync(new PortReport(runId, "d-1", "Delivered", null, null), CancellationToken.None);

        var line = Assert.Single(sink.Lines, l => l.Contains("[2219]", StringComparison.Ordinal));
        Assert.StartsWith(level + " ", line, StringComparison.Ordinal);
        Assert.Contains($"Port answered HTTP {status} to the log line for run {runId} (Location: {location}); the report is {outcome}", line,
            StringComparison.Ordinal);
    }

    private PortApiClient NewClient(WebApplication port, IHttpClientFactory? factory = null, ILogger<PortApiClient>? logger = null) =>
        new(factory ?? _services.GetRequiredService<IHttpClientFactory>(),
            new StaticOptionsMonitor<PortOptions>(new PortOptions
            {
                ApiBaseUrl = new Uri(port.Urls.First()),
                ClientId = "relay-client",
                ClientSecret = TestRuns.Secret,
            }),
            _clock,
            logger ?? NullLogger<PortApiClient>.Instance);

    /// <summary>A stand-in for Port's token endpoint on loopback, answering with <paramref name="answer"/>.</summary>
    private static async Task<WebApplication> StartPortAsync(RequestDelegate answer, Action<WebApplication>? more = null)
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.WebHost.UseUrls("http://127.0.0.1:0");
        builder.Logging.ClearProviders();
        var app = builder.Build();
        app.MapPost("/v1/auth/access_token", answer);
        more?.Invoke(app);
        await app.StartAsync();
        return app;
    }

    private sealed class StaticOptionsMonitor<T>(T value) : IOptionsMonitor<T>
    {
        public T CurrentValue => value;

        public T Get(string? name) => value;

        public IDisposable? OnChange(Action<T, string?> listener) => null;
    }
}
