using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net;
using System.Text.Json;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Diagnostics.Metrics.Testing;
using PortAzure.Diagnostics;
using PortAzure.Ingress.Edge;
using PortAzure.Ingress.Webhooks;
using PortAzure.Redis;
using PortAzure.Tests.Infrastructure;
using StackExchange.Redis;

namespace PortAzure.Tests.Ingress;

/// <summary>The cap on webhook calls in flight, with Redis made to hold calls (CLIENT PAUSE WRITE).</summary>
public class WebhookConcurrencyLimitTests
{

    /// <summary>An Ingress on a Redis of its own (the pause would hold every test sharing one), and an admin connection.</summary>
    private sealed class Setup : IAsyncDisposable
    {
        private RedisServer _redis = null!;
        private ConnectionMultiplexer _admin = null!;

        public TestHost Ingress { get; private set; } = null!;

        public IDatabase Db => _admin.GetDatabase();

        public static async Task<Setup> StartAsync(int maxConcurrentCalls, int concurrentCallsPerClient = 100)
        {
            var setup = new Setup { _redis = await RedisServer.StartAsync() };
            setup.Ingress = await TestHost.StartIngressAsync(new Dictionary<string, string?>
            {
                // Past the pauses below (ended by hand, at most 30 s): a held call must wait for Redis, not time out (3 s by default).
                ["ConnectionStrings:redis"] = setup._redis.ConnectionString + ",asyncTimeout=60000,syncTimeout=60000",
                ["Port:ClientSecret"] = TestRuns.Secret,
                ["Ingress:MaxConcurrentCalls"] = maxConcurrentCalls.ToString(System.Globalization.CultureInfo.InvariantCulture),
                ["Ingress:RateLimit:ConcurrentCallsPerClient"] = concurrentCallsPerClient.ToString(System.Globalization.CultureInfo.InvariantCulture),
            });
            setup._admin = await ConnectionMultiplexer.ConnectAsync(setup._redis.ConnectionString + ",allowAdmin=true");
            return setup;
        }

        /// <summary>
        /// Writes (the Ingress's enqueue script among them) wait this long, or until <see cref="UnpauseAsync"/>; reads go on.
        /// The tests that check calls while they are held end the pause by hand: a pause timed to outlast the checks would
        /// run out first on a loaded machine.
        /// </summary>
        public async Task PauseWritesAsync(int milliseconds) =>
            await Db.ExecuteAsync("CLIENT", "PAUSE", milliseconds.ToString(System.Globalization.CultureInfo.InvariantCulture), "WRITE");

        public async Task UnpauseAsync() => await Db.ExecuteAsync("CLIENT", "UNPAUSE");

        /// <summary>Waits until calls in progress hold every permit (or all but <paramref name="available"/>).</summary>
        public Task PermitsTakenAsync(int available = 0) => Eventually.HoldsAsync(
            () => Task.FromResult(Ingress.Services.GetRequiredService<WebhookConcurrencyLimit>().AvailablePermits == available),
            TimeSpan.FromSeconds(20), "the held calls take their permits");

        public Task<HttpResponseMessage> SendAsync() => TestRuns.SendAsync(Ingress.Client, TestRuns.Body(TestRuns.NewRunId()));

        public async ValueTask DisposeAsync()
        {
            await _admin.DisposeAsync();
            await Ingress.DisposeAsync();
            await _redis.DisposeAsync();
        }
    }

    [Fact]
    public async Task Post_SignedCallsWaitingOnRedis_DoNotCountAgainstTheirClientsOpenCallsCap()
    {
        // The per-address cap guards the bytes held before a signature check. Held through the enqueue, a slow Redis made it
        // Port's own limit (Port calls from a few addresses): 429s where the calls would have waited.
        await using var setup = await Setup.StartAsync(maxConcurrentCalls: 10, concurrentCallsPerClient: 1);
        await setup.PauseWritesAsync(30_000);

        // One after the other, each once the one before waits on Redis: their body reads do not overlap.
        var sending = new List<Task<HttpResponseMessage>>();
        for (var i = 1; i <= 3; i++)
        {
            sending.Add(setup.SendAsync());
            await setup.PermitsTakenAsync(available: 10 - i);
        }
        Assert.DoesNotContain(sending, t => t.IsCompleted);
        await setup.UnpauseAsync();

        Assert.All(await Task.WhenAll(sending), r => Assert.Equal(HttpStatusCode.Accepted, r.StatusCode));
    }

    [Fact]
    public async Task Post_PastTheCapWhileCallsAreHeld_Answers503OverloadedAtOnceAcceptsNothingThenRecovers()
    {
        await using var setup = await Setup.StartAsync(maxConcurrentCalls: 2);
        var stopped = new ConcurrentQueue<Activity>();
        using var listener = new ActivityListener
        {
            ShouldListenTo = source => source.Name is PortAzureDiagnostics.Name or "Microsoft.AspNetCore",
            Sample = (ref ActivityCreationOptions<ActivityContext> _) => ActivitySamplingResult.AllDataAndRecorded,
            ActivityStopped = stopped.Enqueue,
        };
        ActivitySource.AddActivityListener(listener);

        // The two calls hold both permits while their enqueue waits.
        await setup.PauseWritesAsync(30_000);
        var held = new[] { setup.SendAsync(), setup.SendAsync() };
        await setup.PermitsTakenAsync();

        using var refused = await setup.SendAsync();
        var heldWhenRefused = held.Count(t => !t.IsCompleted);

        Assert.Equal(HttpStatusCode.ServiceUnavailable, refused.StatusCode);
        Assert.Equal(2, heldWhenRefused);
        Assert.Equal("application/problem+json", refused.Content.Headers.ContentType?.MediaType);
        Assert.Equal("overloaded", await ProblemResponses.ReasonAsync(refused));
        Assert.Equal(TimeSpan.FromSeconds(1), refused.Headers.RetryAfter?.Delta);
        // Refusals under overload are logged at Debug only: one line per refused call would add to the load.
        Assert.Contains(setup.Ingress.Logs.Lines, line => line.StartsWith("Debug ", StringComparison.Ordinal) && line.Contains(RejectionReasons.Overloaded, StringComparison.Ordinal));
        Assert.DoesNotContain(setup.Ingress.Logs.Lines, line => !line.StartsWith("Debug ", StringComparison.Ordinal) && line.Contains(RejectionReasons.Overloaded, StringComparison.Ordinal));
        // The call's span says why; no send span, as nothing was sent.
        await Eventually.HoldsAsync(() => Task.FromResult(stopped.Any(a => a.Kind == ActivityKind.Server && RejectionReasons.Overloaded.Equals(a.GetTagItem("portazure.reason")))),
            TimeSpan.FromSeconds(10), "the refused call's span");
        var call = Assert.Single(stopped, a => a.Kind == ActivityKind.Server && RejectionReasons.Overloaded.Equals(a.GetTagItem("portazure.reason")));
        Assert.Equal("rejected", call.GetTagItem("portazure.outcome"));
        Assert.DoesNotContain(stopped, a => a.ParentSpanId == call.SpanId);

        await setup.UnpauseAsync();
        foreach (var response in await Task.WhenAll(held))
        {
            Assert.Equal(HttpStatusCode.Accepted, response.StatusCode);
            response.Dispose();
        }
        // The refused call left nothing behind; the permits came back.
        Assert.Equal(2, await setup.Db.StreamLengthAsync(RedisKeys.Stream));
        using var after = await setup.SendAsync();
        Assert.Equal(HttpStatusCode.Accepted, after.StatusCode);
    }

    [Fact]
    public async Task Post_BadSignatureWhileTheCapIsReached_IsStill401_PermitsAreTakenOnlyAfterVerification()
    {
        await using var setup = await Setup.StartAsync(maxConcurrentCalls: 1);
        await setup.PauseWritesAsync(30_000);
        var held = setup.SendAsync();
        await setup.PermitsTakenAsync();

        using var badRequest = TestRuns.Signed(TestRuns.Body(TestRuns.NewRunId()), secret: "not-the-secret");
        using var unsigned = await setup.Ingress.Client.SendAsync(badRequest);
        using var signed = await setup.SendAsync();

        Assert.False(held.IsCompleted);
        Assert.Equal(HttpStatusCode.Unauthorized, unsigned.StatusCode);
        Assert.Equal(HttpStatusCode.ServiceUnavailable, signed.StatusCode);
        await setup.UnpauseAsync();
        using var heldResponse = await held;
        Assert.Equal(HttpStatusCode.Accepted, heldResponse.StatusCode);
    }

    [Fact]
    public async Task Post_CapZero_HasNoCap()
    {
        await using var setup = await Setup.StartAsync(maxConcurrentCalls: 0);

        // Held until released by hand: a timed pause could run out before the calls arrive on a loaded machine, and
        // then they would never overlap. A cap of zero read as "no permits" (or as one) refuses them while held.
        var meters = setup.Ingress.Services.GetRequiredService<System.Diagnostics.Metrics.IMeterFactory>();
        using var active = new MetricCollector<long>(meters, "Microsoft.AspNetCore.Hosting", "http.server.active_requests");
        await setup.PauseWritesAsync(30_000);
        var sending = Enumerable.Range(0, 5).Select(_ => setup.SendAsync()).ToList();
        await Eventually.HoldsAsync(() => Task.FromResult(active.GetMeasurementSnapshot().Sum(m => m.Value) == 5), TimeSpan.FromSeconds(20),
            "the five calls are in progress at once");
        Assert.DoesNotContain(sending, t => t.IsCompleted);
        await setup.UnpauseAsync();
        var responses = await Task.WhenAll(sending);

        Assert.All(responses, r => Assert.Equal(HttpStatusCode.Accepted, r.StatusCode));
        Assert.Equal(5, await setup.Db.StreamLengthAsync(RedisKeys.Stream));
    }
}
