using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Time.Testing;
using PortAzure.Dispatcher.PortReporting;
using PortAzure.Security;
using PortAzure.Tests.Infrastructure;

namespace PortAzure.Tests.Dispatcher;

/// <summary>
/// The client's pauses (after a refusal, a failed token call, a 429) on a wall clock stepped back by an hour, as NTP or an
/// operator may do: each pause ends after its own length, not after the step.
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

    private Task<PortCallResult> SendAsync() =>
        _client.SendLogAsync(new PortReport(TestRuns.NewRunId(), "d-1", "Delivered", null, null), CancellationToken.None);
}
