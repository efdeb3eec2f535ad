using System.Net;
using System.Text.Json;
using PortAzure.Redis;
using PortAzure.Tests.Infrastructure;
using StackExchange.Redis;

namespace PortAzure.Tests.Ingress;

/// <summary>The cap on webhook calls in flight, with Redis made to hold calls (CLIENT PAUSE WRITE).</summary>
public class WebhookConcurrencyLimitTests
{
    private static async Task<(RedisServer Redis, TestHost Ingress)> StartAsync(int maxConcurrentCalls)
    {
        // Its own server: the pause would hold every test sharing one.
        var redis = await RedisServer.StartAsync();
        var ingress = await TestHost.StartIngressAsync(new Dictionary<string, string?>
        {
            ["ConnectionStrings:redis"] = redis.ConnectionString,
            ["Port:ClientSecret"] = TestRuns.Secret,
            ["Ingress:MaxConcurrentCalls"] = maxConcurrentCalls.ToString(System.Globalization.CultureInfo.InvariantCulture),
        });
        return (redis, ingress);
    }

    [Fact]
    public async Task Post_PastTheCapWhileCallsAreHeld_Answers503OverloadedAtOnceAcceptsNothingThenRecovers()
    {
        var (redis, ingress) = await StartAsync(maxConcurrentCalls: 2);
        await using var _ = redis;
        await using var __ = ingress;
        await using var admin = await ConnectionMultiplexer.ConnectAsync(redis.ConnectionString + ",allowAdmin=true");
        var db = admin.GetDatabase();

        // Writes (the Ingress's enqueue script) wait for 3 s; the two calls hold both permits meanwhile.
        await db.ExecuteAsync("CLIENT", "PAUSE", "3000", "WRITE");
        var held = new[] { TestRuns.NewRunId(), TestRuns.NewRunId() }
            .Select(id => TestRuns.SendAsync(ingress.Client, TestRuns.Body(id))).ToArray();
        await Eventually.HoldsAsync(() => Task.FromResult(held.All(t => !t.IsCompleted)), TimeSpan.FromSeconds(1), "both calls in progress");
        await Task.Delay(300);

        using var refused = await TestRuns.SendAsync(ingress.Client, TestRuns.Body(TestRuns.NewRunId()));
        var heldWhenRefused = held.Count(t => !t.IsCompleted);

        Assert.Equal(HttpStatusCode.ServiceUnavailable, refused.StatusCode);
        Assert.Equal(2, heldWhenRefused);
        Assert.Equal("application/problem+json", refused.Content.Headers.ContentType?.MediaType);
        Assert.Equal("overloaded", JsonDocument.Parse(await refused.Content.ReadAsStringAsync()).RootElement.GetProperty("reason").GetString());
        Assert.Equal(TimeSpan.FromSeconds(1), refused.Headers.RetryAfter?.Delta);

        foreach (var response in await Task.WhenAll(held))
        {
            Assert.Equal(HttpStatusCode.Accepted, response.StatusCode);
            response.Dispose();
        }
        // The refused call left nothing behind; the permits came back.
        Assert.Equal(2, await db.StreamLengthAsync(RedisKeys.Stream));
        using var after = await TestRuns.SendAsync(ingress.Client, TestRuns.Body(TestRuns.NewRunId()));
        Assert.Equal(HttpStatusCode.Accepted, after.StatusCode);
    }

    [Fact]
    public async Task Post_CapZero_HasNoCap()
    {
        var (redis, ingress) = await StartAsync(maxConcurrentCalls: 0);
        await using var _ = redis;
        await using var __ = ingress;
        await using var admin = await ConnectionMultiplexer.ConnectAsync(redis.ConnectionString + ",allowAdmin=true");

        await admin.GetDatabase().ExecuteAsync("CLIENT", "PAUSE", "1000", "WRITE");
        var responses = await Task.WhenAll(Enumerable.Range(0, 5).Select(_ => TestRuns.SendAsync(ingress.Client, TestRuns.Body(TestRuns.NewRunId()))));

        Assert.All(responses, r => Assert.Equal(HttpStatusCode.Accepted, r.StatusCode));
        Assert.Equal(5, await admin.GetDatabase().StreamLengthAsync(RedisKeys.Stream));
    }
}
