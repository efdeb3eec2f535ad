using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Options;
using Microsoft.Extensions.Time.Testing;
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
        services.AddHttpClient(PortApiClient.HttpClientName);
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
    public async Task SendLogAsync_TokenCallAnswered200WithoutAUsableToken_PausesTheSendsBehindIt(string mediaType, string tokenBody)
    {
        // A proxy's page or an empty token is a failed token call: the sends behind it must not each ask again.
        var tokenCalls = 0;
        await using var port = await StartPortAsync(async context =>
        {
            Interlocked.Increment(ref tokenCalls);
            context.Response.ContentType = mediaType;
            await context.Response.WriteAsync(tokenBody);
        });
        using var client = NewClient(port);

        var first = await TrySendAsync(client);
        Assert.True(first is PortCallResult.RetryLater or null, $"the first send gave {first}");
        Assert.Equal(PortCallResult.NotTried, await TrySendAsync(client));
        Assert.Equal(1, Volatile.Read(ref tokenCalls));

        _clock.Advance(PortApiClient.TokenFailurePause);
        await TrySendAsync(client);
        Assert.Equal(2, Volatile.Read(ref tokenCalls));
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

    private PortApiClient NewClient(WebApplication port) =>
        new(_services.GetRequiredService<IHttpClientFactory>(),
            new StaticOptionsMonitor<PortOptions>(new PortOptions
            {
                ApiBaseUrl = new Uri(port.Urls.First()),
                ClientId = "relay-client",
                ClientSecret = TestRuns.Secret,
            }),
            _clock,
            NullLogger<PortApiClient>.Instance);

    /// <summary>A stand-in for Port's token endpoint on loopback, answering with <paramref name="answer"/>.</summary>
    private static async Task<WebApplication> StartPortAsync(RequestDelegate answer)
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.WebHost.UseUrls("http://127.0.0.1:0");
        builder.Logging.ClearProviders();
        var app = builder.Build();
        app.MapPost("/v1/auth/access_token", answer);
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
