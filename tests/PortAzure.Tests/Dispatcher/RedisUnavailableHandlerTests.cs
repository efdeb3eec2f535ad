using System.Net;
using System.Net.Http.Json;
using System.Text.Json;
using PortAzure.Redis;
using PortAzure.Tests.Infrastructure;

namespace PortAzure.Tests.Dispatcher;

public class RedisUnavailableHandlerTests
{
    [Fact]
    public async Task OperatorApi_RedisGone_Answers503ProblemWithReasonAndRetryAfter()
    {
        await using var redis = await RedisServer.StartAsync();
        await using var relay = await Relay.StartAsync(redisConnection: redis.ConnectionString);
        using (var before = relay.Operator(HttpMethod.Get, "/api/stats"))
        using (var answer = await relay.Ingress.Client.SendAsync(before))
        {
            Assert.Equal(HttpStatusCode.OK, answer.StatusCode);
        }

        redis.Kill();
        using var request = relay.Operator(HttpMethod.Get, "/api/stats");
        using var response = await relay.Ingress.Client.SendAsync(request);

        // Through the Ingress's YARP route, as an operator sees it: not a bare 500.
        Assert.Equal(HttpStatusCode.ServiceUnavailable, response.StatusCode);
        Assert.Equal("application/problem+json", response.Content.Headers.ContentType?.MediaType);
        Assert.Equal("redis_unavailable", await ProblemResponses.ReasonAsync(response));
        Assert.NotNull(response.Headers.RetryAfter);
    }

    [Fact]
    public async Task OperatorApi_RedisAnswersWithAnError_IsA500NotRedisUnavailable()
    {
        // WRONGTYPE is a fault (here: a key damaged by hand), not an outage a retry would outlast.
        await using var relay = await Relay.StartAsync();
        await relay.Db.StringSetAsync(RedisKeys.DeadLetters, "not a sorted set");

        using var request = relay.Operator(HttpMethod.Get, "/api/deadletters");
        using var response = await relay.Ingress.Client.SendAsync(request);

        Assert.Equal(HttpStatusCode.InternalServerError, response.StatusCode);
        Assert.Null(response.Headers.RetryAfter);
    }
}
